"""The embedded default forge: bare git repositories and pull-request records on disk."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import git

from bot.errors import ForgeError
from bot.forge import BOT_HANDLE, Comment, PullRequest
from bot.fsutil import atomic_write_text
from bot.state import now

BOT = (BOT_HANDLE, "bot@wheelstock.invalid")


def _identity(name: str, email: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


@contextmanager
def _git_errors(what: str) -> Iterator[None]:
    """Translate a failing git command into one ForgeError line naming what was being done."""
    try:
        yield
    except git.GitCommandError as exc:
        # git says why on stderr, first line ("fatal: ..."), or for some commands on stdout,
        # last line ("nothing to commit").
        def lines(stream: object) -> list[str]:
            return [
                line.strip().removeprefix("stderr: ").removeprefix("stdout: ").strip(" '")
                for line in str(stream or "").splitlines()
                if line.strip().strip("'")
            ]

        said = lines(exc.stderr)[:1] or lines(exc.stdout)[-1:]
        reason = said[0] if said else f"exit {exc.status}"
        raise ForgeError(f"{what}: git failed: {reason}") from exc


def _write_tree(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


class LocalForge:
    """Feedstocks as bare repos under ``root/repos``, pull requests as JSON under ``root/pulls``."""

    def __init__(self, root: Path):
        # Absolute: git runs inside temporary clones, where a relative path means something else.
        self.root = root.resolve()
        self.repos = self.root / "repos"
        self.pulls = self.root / "pulls"

    # -- repositories ---------------------------------------------------------------------
    def repo_path(self, project: str) -> Path:
        return self.repos / f"{project}-feedstock.git"

    def _bare(self, project: str) -> git.Repo:
        path = self.repo_path(project)
        if not path.is_dir():
            raise ForgeError(f"no feedstock for project '{project}'")
        return git.Repo(path)

    def has_feedstock(self, project: str) -> bool:
        return self.repo_path(project).is_dir()

    def feedstocks(self) -> list[str]:
        if not self.repos.is_dir():
            return []
        suffix = "-feedstock.git"
        return sorted(p.name[: -len(suffix)] for p in self.repos.glob(f"*{suffix}"))

    @contextmanager
    def _clone(self, project: str, identity: tuple[str, str]) -> Iterator[git.Repo]:
        with tempfile.TemporaryDirectory(prefix="wheelstock-clone-") as tmp:
            work = git.Repo.clone_from(str(self.repo_path(project)), tmp)
            work.git.update_environment(**_identity(*identity))
            yield work

    def create_feedstock(self, project: str, files: Mapping[str, str], message: str) -> str:
        target = self.repo_path(project)
        if target.exists():
            raise ForgeError(f"feedstock for '{project}' already exists")
        self.repos.mkdir(parents=True, exist_ok=True)
        # Build the repository under a temporary name and rename it into place, so a failure
        # never leaves a half-made feedstock that later ticks would take for a real one.
        staging = Path(tempfile.mkdtemp(prefix=f".{project}-", dir=self.repos))
        try:
            with (
                _git_errors(f"creating {project}-feedstock"),
                tempfile.TemporaryDirectory(prefix="wheelstock-init-") as tmp,
            ):
                git.Repo.init(staging, bare=True, initial_branch="main")
                work = git.Repo.init(tmp, initial_branch="main")
                work.git.update_environment(**_identity(*BOT))
                _write_tree(Path(tmp), files)
                work.git.add("--all")
                work.git.commit("-m", message)
                work.git.push(str(staging), "main:refs/heads/main")
                sha = work.head.commit.hexsha
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return str(sha)

    def head(self, project: str, ref: str = "main") -> str:
        try:
            return str(self._bare(project).git.rev_parse("--verify", f"{ref}^{{commit}}"))
        except git.GitCommandError as exc:
            raise ForgeError(f"{project}-feedstock has no ref '{ref}'") from exc

    def read_file(self, project: str, path: str, ref: str = "main") -> str:
        try:
            return str(self._bare(project).git.show(f"{ref}:{path}", strip_newline_in_stdout=False))
        except git.GitCommandError as exc:
            raise ForgeError(f"{project}-feedstock has no {path} at {ref}") from exc

    def branches(self, project: str) -> list[str]:
        return [h.name for h in self._bare(project).heads]

    def push_change(self, project: str, branch: str, files: Mapping[str, str], message: str) -> str:
        if branch in self.branches(project):
            raise ForgeError(f"branch '{branch}' already exists on {project}-feedstock")
        with (
            _git_errors(f"pushing {branch} to {project}-feedstock"),
            self._clone(project, BOT) as work,
        ):
            work.git.checkout("-b", branch, "origin/main")
            _write_tree(Path(work.working_dir), files)
            work.git.add("--all")
            work.git.commit("-m", message)
            work.git.push("origin", f"{branch}:refs/heads/{branch}")
            return str(work.head.commit.hexsha)

    def update_branch(
        self, project: str, branch: str, files: Mapping[str, str], message: str
    ) -> str | None:
        if branch not in self.branches(project):
            raise ForgeError(f"{project}-feedstock has no branch '{branch}'")
        with (
            _git_errors(f"pushing to {branch} of {project}-feedstock"),
            self._clone(project, BOT) as work,
        ):
            work.git.checkout("-b", branch, f"origin/{branch}")
            _write_tree(Path(work.working_dir), files)
            work.git.add("--all")
            if not work.git.status("--porcelain"):
                return None
            work.git.commit("-m", message)
            # No force: if someone pushed meanwhile, git refuses and the caller hears of it.
            work.git.push("origin", f"{branch}:refs/heads/{branch}")
            return str(work.head.commit.hexsha)

    def branch_authors(self, project: str, branch: str) -> set[str]:
        with _git_errors(f"reading {branch} of {project}-feedstock"):
            log = self._bare(project).git.log("--format=%an%x00%cn", f"main..{branch}")
        return {name for line in str(log).splitlines() for name in line.split("\0") if name}

    # -- pull requests --------------------------------------------------------------------
    def _pr_path(self, number: int) -> Path:
        return self.pulls / f"{number:06d}.json"

    def _save(self, pr: PullRequest) -> None:
        atomic_write_text(self._pr_path(pr.number), json.dumps(asdict(pr), indent=2) + "\n")

    def pull_requests(
        self, project: str | None = None, state: str | None = None
    ) -> list[PullRequest]:
        if not self.pulls.is_dir():
            return []
        prs = [self._load(p) for p in sorted(self.pulls.glob("*.json"))]
        return [
            pr
            for pr in prs
            if (project is None or pr.project == project) and (state is None or pr.state == state)
        ]

    def _load(self, path: Path) -> PullRequest:
        try:
            pr = PullRequest(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ForgeError(f"{path}: not a readable pull request record") from exc
        if pr.state == "open" and pr.branch in self.branches(pr.project):
            # Like a hosted forge, an open PR is whatever its branch holds now, so what
            # `pr show` displays is what `pr merge` merges.
            pr = replace(pr, head_commit=self.head(pr.project, pr.branch))
        return pr

    def get_pr(self, number: int) -> PullRequest:
        path = self._pr_path(number)
        if not path.is_file():
            raise ForgeError(f"no pull request #{number}")
        return self._load(path)

    def open_pr(self, project: str, branch: str, title: str, body: str) -> PullRequest:
        numbers = [pr.number for pr in self.pull_requests()]
        pr = PullRequest(
            number=max(numbers, default=0) + 1,
            project=project,
            branch=branch,
            title=title,
            body=body,
            state="open",
            base_commit=self.head(project, "main"),
            head_commit=self.head(project, branch),
            created_at=now(),
        )
        self._save(pr)
        return pr

    def diff(self, number: int) -> str:
        pr = self.get_pr(number)
        return str(
            self._bare(pr.project).git.diff(
                pr.base_commit, pr.head_commit, strip_newline_in_stdout=False
            )
        )

    def _open(self, number: int) -> PullRequest:
        pr = self.get_pr(number)
        if pr.state != "open":
            raise ForgeError(f"pull request #{number} is {pr.state}, not open")
        return pr

    def merge_pr(self, number: int, by: str) -> PullRequest:
        pr = self._open(number)
        with self._clone(pr.project, (by, f"{by}@wheelstock.invalid")) as work:
            work.git.checkout("main")
            try:
                # The commit the PR record shows, not whatever the branch holds by now.
                work.git.merge(
                    "--no-ff",
                    pr.head_commit,
                    "-m",
                    f"Merge pull request #{number} from {pr.branch}\n\n{pr.title}",
                )
            except git.GitCommandError as exc:
                raise ForgeError(
                    f"pull request #{number} does not merge cleanly into main; rebase it first"
                ) from exc
            with _git_errors(f"merging pull request #{number}"):
                work.git.push("origin", "main:refs/heads/main")
            merged = str(work.head.commit.hexsha)
        pr = replace(pr, state="merged", merged_commit=merged, closed_by=by)
        self._save(pr)
        return pr

    def close_pr(self, number: int, by: str) -> PullRequest:
        pr = replace(self._open(number), state="closed", closed_by=by)
        self._save(pr)
        return pr

    # -- comments -------------------------------------------------------------------------
    def _comments_path(self, number: int) -> Path:
        return self.root / "comments" / f"{number:06d}.json"

    def comments(self, number: int, *, after: int = 0) -> list[Comment]:
        self.get_pr(number)  # a missing PR is an error, not an empty thread
        path = self._comments_path(number)
        if not path.is_file():
            return []
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
            thread = [Comment(**record) for record in records]
        except (OSError, ValueError, TypeError) as exc:
            raise ForgeError(f"{path}: not a readable comment thread") from exc
        return [c for c in thread if c.id > after]

    def comment(self, number: int, author: str, body: str) -> Comment:
        thread = self.comments(number)
        # Ids grow across all PRs, as on hosted forges, so "seen up to id N" is one number.
        everything = [
            c.id
            for path in (self.root / "comments").glob("*.json")
            for c in self.comments(int(path.stem))
        ]
        new = Comment(
            id=max(everything, default=0) + 1,
            number=number,
            author=author,
            body=body,
            created_at=now(),
        )
        records = [asdict(c) for c in [*thread, new]]
        atomic_write_text(self._comments_path(number), json.dumps(records, indent=2) + "\n")
        return new
