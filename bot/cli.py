"""The ``wheelstock`` command line: parse, call the library, print, exit codes.

Over the ~500 lines a module here aims for: it is the whole command surface, one argparse
tree and one short function per command that only parses, calls the library and prints, as
pip's and pypa/build's are; the work lives in the modules it calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from packaging.utils import canonicalize_name

from bot import (
    __version__,
    dependencies,
    feedstock,
    gate,
    index,
    index_verify,
    lint,
    nginx,
    registry,
    serve,
    signing,
    status,
    tick,
)
from bot import graph as graphs
from bot.build import stage
from bot.build.extract import Limits
from bot.build.sandbox import ResourceLimits
from bot.build.targets import parse_python_option
from bot.context import MAX_NEW_PRS, MAX_OPEN_PRS, Bot, Summary
from bot.errors import BuildError, WheelstockError
from bot.forge.local import LocalForge
from bot.fsutil import atomic_write_text
from bot.pipconfig import default_index_url
from bot.state import FORGE_CURSOR, State
from bot.upstream import Upstream, make_client

STATE_ENV = "WHEELSTOCK_STATE_DIR"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        help=f"where the bot keeps its state (default: ${STATE_ENV} or .wheelstock)",
    )
    common.add_argument(
        "--registry",
        type=Path,
        default=Path("registry"),
        help="registry directory (default: registry)",
    )
    common.add_argument(
        "--template",
        type=Path,
        help="feedstock template directory (default: ./feedstock-template if present, else the "
        "template installed with wheelstock)",
    )
    common.add_argument(
        "--upstream",
        metavar="URL",
        help="upstream simple index (default: the index pip is configured to use)",
    )
    return common


def _number(
    kind: type[int] | type[float], low: float, high: float, what: str
) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` in [low, high], else a one-line usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_port = _number(int, 0, 65535, "a port number (0-65535)")
_count = _number(int, 0, 10**9, "a count (0 or more)")
_hours = _number(float, 0, 24 * 365 * 10, "a number of hours")
_seconds = _number(float, 1, 7 * 24 * 3600, "a number of seconds (1 or more)")
_mib = _number(int, 1, 1 << 30, "a size in MiB (1 or more)")


def _mebibytes(text: str) -> int:
    return int(_mib(text)) << 20


def _building() -> argparse.ArgumentParser:
    """Options of the commands that build: the sandbox, its limits, Pythons, reproducibility."""
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="build without bubblewrap where it cannot run: project code then has this "
        "machine's network and files (resource limits still apply)",
    )
    opts.add_argument(
        "--python",
        dest="pythons",
        action="append",
        type=_python_option,
        default=[],
        metavar="X.Y=PATH",
        help="the interpreter for Python X.Y (default: python3.X on PATH); repeatable",
    )
    opts.add_argument(
        "--verify-reproducible",
        action="store_true",
        help="build each wheel twice in fresh sandboxes and compare them byte for byte",
    )
    opts.add_argument(
        "--build-timeout",
        type=_seconds,
        default=900.0,
        metavar="S",
        help="wall time of one build (default: 900)",
    )
    opts.add_argument(
        "--build-memory",
        type=_mebibytes,
        default=ResourceLimits.memory_bytes,
        metavar="MiB",
        help=f"address space per build process (default: {ResourceLimits.memory_bytes >> 20})",
    )
    opts.add_argument(
        "--build-processes",
        type=_count,
        default=ResourceLimits.processes,
        metavar="N",
        help=f"processes per build (default: {ResourceLimits.processes})",
    )
    opts.add_argument(
        "--build-cpu",
        type=_count,
        default=ResourceLimits.cpu_seconds,
        metavar="S",
        help=f"CPU seconds per build process (default: {ResourceLimits.cpu_seconds})",
    )
    opts.add_argument(
        "--max-sdist-bytes",
        type=_mebibytes,
        default=Limits.max_bytes,
        metavar="MiB",
        help=f"largest unpacked sdist (default: {Limits.max_bytes >> 20})",
    )
    opts.add_argument(
        "--max-sdist-members",
        type=_count,
        default=Limits.max_members,
        metavar="N",
        help=f"most files in an sdist (default: {Limits.max_members})",
    )
    return opts


def _python_option(text: str) -> tuple[str, str]:
    try:
        return parse_python_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    building = _building()
    parser = argparse.ArgumentParser(
        prog="wheelstock", description="Wheels for projects that publish none."
    )
    parser.add_argument("--version", action="version", version=f"wheelstock {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tick_cmd = commands.add_parser(
        "tick", parents=[common, building], help="run one whole cycle of the bot"
    )
    tick_cmd.add_argument(
        "--max-new-prs",
        type=_count,
        default=MAX_NEW_PRS,
        metavar="N",
        help=f"open at most N pull requests in this tick (default: {MAX_NEW_PRS})",
    )
    tick_cmd.add_argument(
        "--max-open-prs",
        type=_count,
        default=MAX_OPEN_PRS,
        metavar="M",
        help=f"keep at most M bot pull requests open per feedstock (default: {MAX_OPEN_PRS})",
    )
    tick_cmd.add_argument(
        "--no-build",
        action="store_true",
        help="only watch upstream and tend pull requests; build and publish in a later tick",
    )
    tick_cmd.add_argument(
        "--min-release-age",
        type=lambda text: timedelta(hours=_hours(text)),
        metavar="HOURS",
        help="propose a release only once it is this old (earliest upload time of its files)",
    )
    tick_cmd.add_argument(
        "--no-change-feed",
        dest="change_feed",
        action="store_false",
        help="check every project's page conditionally, even where upstream's root page says "
        "which projects changed",
    )
    commands.add_parser(
        "status", parents=[common], help="every project: state, feedstock, PRs, last build"
    )

    reg = commands.add_parser("registry", help="registry entries").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    lint = reg.add_parser("lint", parents=[common], help="check registry entries")
    lint.add_argument(
        "paths", nargs="*", type=Path, help="files or directories (default: --registry)"
    )
    lint.add_argument(
        "--offline", action="store_true", help="do not ask upstream whether projects exist"
    )
    lint.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    lint.add_argument(
        "--changed-since",
        metavar="REF",
        help="lint only entries added or changed since REF (git), as an enrolment PR check",
    )
    add = reg.add_parser("add", parents=[common], help="enrol a project: write its entry")
    add.add_argument("project")
    add.add_argument(
        "--maintainer", dest="maintainers", action="append", required=True, metavar="HANDLE"
    )
    add.add_argument("--consent", required=True, metavar="URL")

    pr = commands.add_parser("pr", help="pull requests on feedstocks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = pr.add_parser("list", parents=[common], help="list pull requests")
    listing.add_argument("--all", action="store_true", help="include merged and closed ones")
    comment = pr.add_parser(
        "comment", parents=[common], help="comment on a pull request (e.g. a bot command)"
    )
    comment.add_argument("number", type=int)
    comment.add_argument("--as", dest="handle", required=True, help="who comments")
    comment.add_argument("text", help='the comment, e.g. "@wheelstock rebuild"')
    for name, text in (("show", "body and diff"), ("merge", "merge into main"), ("close", "close")):
        sub = pr.add_parser(name, parents=[common], help=f"{text} of a pull request")
        sub.add_argument("number", type=int)
        if name != "show":
            sub.add_argument("--as", dest="handle", default="reviewer", help="who does it")

    build = commands.add_parser(
        "build",
        parents=[common, building],
        help="build merged feedstock heads that have no build yet",
    )
    build.add_argument(
        "--feedstock",
        type=Path,
        metavar="DIR",
        help="instead, build one feedstock checkout (what the feedstock's CI workflow runs)",
    )
    build.add_argument(
        "--out", type=Path, default=Path("dist"), help="with --feedstock: where wheels go"
    )

    review = commands.add_parser("review", help="the gate before the index").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    rlist = review.add_parser("list", parents=[common], help="builds awaiting review")
    rlist.add_argument("--all", action="store_true", help="every build, whatever its status")
    for name in ("approve", "reject"):
        sub = review.add_parser(name, parents=[common], help=f"{name} a staged build")
        sub.add_argument("project")
        sub.add_argument("version")
        sub.add_argument("--as", dest="handle", required=True, help="your forge handle")
        if name == "reject":
            sub.add_argument("--reason", required=True)

    graph = commands.add_parser(
        "graph", parents=[common], help="the dependency graph of enrolled projects"
    )
    views = graph.add_subparsers(dest="action", metavar="ACTION")
    views.add_parser("order", parents=[common], help="build waves; cycles broken")
    impact = views.add_parser("impact", parents=[common], help="transitive dependents of NAME")
    impact.add_argument("name")
    views.add_parser("missing", parents=[common], help="what is needed but not enrolled")
    export = views.add_parser("export", parents=[common], help="the graph as json, graphml, dot")
    export.add_argument("--format", choices=graphs.FORMATS, default="json")
    draw = views.add_parser("draw", parents=[common], help="an SVG picture of the graph")
    draw.add_argument("file", type=Path, metavar="FILE.svg")
    draw.add_argument(
        "--no-graphviz", action="store_true", help="use the built-in layout even if dot exists"
    )

    index_cmd = commands.add_parser(
        "index", parents=[common], help="publish approved builds and rewrite the index pages"
    )
    index_views = index_cmd.add_subparsers(dest="action", metavar="ACTION")
    conf = index_views.add_parser(
        "nginx-conf",
        parents=[common],
        help="print the nginx configuration that serves the index tree (PEP 691 negotiation)",
    )
    conf.add_argument(
        "--listen", default="127.0.0.1:8080", help="nginx's listen address (default: %(default)s)"
    )
    index_views.add_parser(
        "key", parents=[common], help="print the public key that signs the index's provenance"
    )
    index_views.add_parser(
        "verify",
        parents=[common],
        help="check the tree: files, sizes, sha256, .metadata, pages and their twins, strays",
    )
    check = commands.add_parser(
        "verify", help="check a wheel against the signed provenance its index publishes"
    )
    check.add_argument("target", metavar="WHEEL_OR_URL", help="a wheel file or its URL")
    check.add_argument("--index", metavar="URL", help="the index's /simple/ URL")
    check.add_argument(
        "--key", type=Path, metavar="FILE", help="the index's public key (`wheelstock index key`)"
    )
    srv = commands.add_parser("serve", parents=[common], help="serve the index over HTTP")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=_port, default=8080)
    return parser


def _state(args: argparse.Namespace) -> State:
    root = args.state_dir or Path(os.environ.get(STATE_ENV) or ".wheelstock")
    return State(root)


def _upstream(args: argparse.Namespace) -> Upstream:
    url = args.upstream or default_index_url(os.environ)
    return Upstream(url, make_client())


def _bot(args: argparse.Namespace, state: State) -> Bot:
    return Bot(
        state=state,
        forge=LocalForge(state.forge_dir),
        upstream=_upstream(args),
        registry_dir=args.registry,
        template_dir=args.template or feedstock.default_template(),
        max_new_prs=getattr(args, "max_new_prs", MAX_NEW_PRS),
        max_open_prs=getattr(args, "max_open_prs", MAX_OPEN_PRS),
        min_release_age=getattr(args, "min_release_age", None),
        change_feed=getattr(args, "change_feed", True),
        unsafe_no_sandbox=getattr(args, "unsafe_no_sandbox", False),
        pythons=dict(getattr(args, "pythons", [])),
        verify_reproducible=getattr(args, "verify_reproducible", False),
        build_timeout=getattr(args, "build_timeout", 900.0),
        resource_limits=ResourceLimits(
            cpu_seconds=getattr(args, "build_cpu", ResourceLimits.cpu_seconds),
            memory_bytes=getattr(args, "build_memory", ResourceLimits.memory_bytes),
            processes=getattr(args, "build_processes", ResourceLimits.processes),
        ),
        extract_limits=replace(
            Limits(),
            max_bytes=getattr(args, "max_sdist_bytes", Limits.max_bytes),
            max_members=getattr(args, "max_sdist_members", Limits.max_members),
        ),
    )


def cmd_tick(args: argparse.Namespace, state: State) -> int:
    bot = _bot(args, state)
    print(f"upstream: {bot.upstream.index_url}")
    summary = tick.tick(bot, build=not args.no_build)
    print(summary.line())
    return 1 if summary.errors or summary.failed else 0


def build_checkout(args: argparse.Namespace) -> int:
    """Build one feedstock checkout into --out: the same steps a tick runs for a merged head."""
    path = args.feedstock / feedstock.FEEDSTOCK_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WheelstockError(f"{path}: cannot read: {exc.strerror}") from exc
    fs = feedstock.parse(text, str(path))
    reg = registry.load_directory(args.registry) if args.registry.is_dir() else None
    entry = None
    if reg is not None and canonicalize_name(fs.project) in reg.claimed:
        entry = reg.get(fs.project)
    with tempfile.TemporaryDirectory(prefix="wheelstock-build-") as scratch:
        # The state of a checkout build is thrown away: only the wheels in --out remain.
        state = State(Path(scratch) / "state")
        try:
            bot = _bot(args, state)
            result = stage.fetch_and_build(
                bot, fs, Path(scratch) / "downloads", args.out.resolve(), entry
            )
        finally:
            state.close()
    print(result.log, end="")
    if not result.ok:
        raise BuildError(f"build of {fs.project} {fs.version} failed: {result.reason}")
    for wheel in result.wheels:
        print(f"built {wheel}")
    return 0


def cmd_status(args: argparse.Namespace, state: State) -> int:
    rows = status.status(state, LocalForge(state.forge_dir), args.registry)
    print(f"{'project':<24} {'state':<8} {'feedstock':<12} {'open PRs':<8} last build")
    for row in rows:
        print(row.line())
    return 0


def cmd_build(args: argparse.Namespace, state: State) -> int:
    bot = _bot(args, state)
    summary = Summary()
    reg = tick.load_registry(bot, summary)
    stage.build_heads(bot, tick.active(bot, reg, summary), summary)
    print(f"build: {summary.built} built, {summary.failed} failed, {len(summary.errors)} errors")
    return 1 if summary.errors or summary.failed else 0


def _progress(done: int, total: int) -> None:
    print(f"checked {done}/{total} projects upstream", file=sys.stderr)


def cmd_registry(args: argparse.Namespace, state: State | None) -> int:
    if args.action == "add":
        upstream = _upstream(args)
        page = upstream.project(args.project)  # ProjectNotFound is the user's one-line error
        path = lint.add(args.registry, args.project, args.maintainers, args.consent)
        print(f"wrote {path} for {args.project} ({page.url}); open a pull request with it")
        return 0
    paths = args.paths or [args.registry]
    only = None
    if args.changed_since:
        only = lint.changed_since(args.changed_since, args.registry)
        paths = [args.registry]
    checked = only if only is not None else lint.expand(paths)
    exists = None if args.offline else lint.upstream_check(_upstream(args), _progress)
    problems = lint.lint(paths, only=only, exists=exists)
    if args.format == "markdown":
        print(lint.format_markdown(problems, checked), end="")
    elif args.format == "json":
        print(lint.format_json(problems, checked), end="")
    else:
        print(lint.format_text(problems), end="")
        if problems:
            print(f"{len(problems)} problem(s) in {len(checked)} file(s)", file=sys.stderr)
    return 1 if problems else 0


def cmd_pr(args: argparse.Namespace, state: State) -> int:
    forge = LocalForge(state.forge_dir)
    if args.action == "list":
        prs = forge.pull_requests(state=None if args.all else "open")
        for p in prs:
            print(f"#{p.number:<4} {p.state:<7} {p.project:<20} {p.title}")
        if not prs:
            print("no open pull requests" if not args.all else "no pull requests")
        return 0
    if args.action == "show":
        p = forge.get_pr(args.number)
        print(f"#{p.number} {p.title} [{p.state}]\nbranch: {p.branch}\n\n{p.body}")
        for c in forge.comments(args.number):
            print(f"--- comment {c.id} by @{c.author} at {c.created_at}\n{c.body}\n")
        print(forge.diff(args.number), end="")
        return 0
    if args.action == "comment":
        if not args.text.strip():
            raise WheelstockError("a comment needs some text")
        c = forge.comment(args.number, args.handle, args.text)
        print(f"commented on #{args.number} as {c.author}; the next tick acts on any command")
        return 0
    if args.action == "merge":
        p = forge.merge_pr(args.number, args.handle)
        print(f"merged #{p.number} into {p.project}-feedstock main at {p.merged_commit}")
        return 0
    p = forge.close_pr(args.number, args.handle)
    print(f"closed #{p.number}")
    return 0


def cmd_review(args: argparse.Namespace, state: State) -> int:
    if args.action == "list":
        builds = state.builds() if args.all else state.builds(status="staged")
        for b in builds:
            wheels = ", ".join(Path(w).name for w in b.wheels) or (b.reason or "")
            print(f"{b.project} {b.version}  {b.status}  {b.commit[:12]}  {wheels}")
        if not builds:
            print("nothing awaits review")
        return 0
    entry = registry.load_directory(args.registry).get(args.project)
    if args.action == "reject":
        build = gate.reject(state, entry, args.version, args.handle, args.reason)
        print(f"rejected {build.project} {build.version} as {args.handle}")
        return 0
    build = gate.approve(state, entry, args.version, args.handle)
    print(f"approved {build.project} {build.version} ({build.commit[:12]}) as {args.handle}")
    return _publish(args, state)


def _publish(args: argparse.Namespace, state: State) -> int:
    outcomes = gate.publish_approved(state, stage.upstream_filenames(_upstream(args)))
    for outcome in outcomes:
        print(outcome.line(), file=sys.stderr if outcome.error else sys.stdout)
    return 1 if any(o.error for o in outcomes) else 0


def _names(names: set[str] | list[str]) -> str:
    return ", ".join(sorted(names)) or "-"


def cmd_graph(args: argparse.Namespace, state: State) -> int:
    bot = _bot(args, state)
    bot.echo = lambda line: print(line, file=sys.stderr)  # progress apart from the answer
    summary = Summary()
    reg = tick.load_registry(bot, summary)
    # What main builds, without git, for every feedstock that did not move since the last tick.
    versions = state.settled_versions(bot.forge.changes(state.get_meta(FORGE_CURSOR)))
    graph = dependencies.dependency_graph(bot, reg.entries, summary, versions)
    if args.action == "order":
        waves, broken = graph.build_order()
        for number, wave in enumerate(waves, 1):
            print(f"wave {number}: {_names(wave)}")
        for dependency, dependent in broken:
            print(f"cycle broken: {dependency} -> {dependent} (build)")
    elif args.action == "impact":
        for kind, dependents in graph.impact(args.name).items():
            print(f"{kind}: {_names(dependents)}")
    elif args.action == "missing":
        for node, needs in sorted(graph.missing.items()):
            kinds = "; ".join(f"{k}: {_names(v)}" for k, v in sorted(needs.items()) if v)
            if kinds:
                print(f"{node} needs {kinds}")
    elif args.action == "export":
        print(graph.export(args.format), end="")
    elif args.action == "draw":
        svg = graph.draw_svg(use_graphviz=False if args.no_graphviz else None)
        atomic_write_text(args.file, svg)
        print(f"wrote {args.file}")
    else:
        edges = graph.edges()
        cycles = graph.cycles(limit=100)
        print(f"nodes: {graph.graph.number_of_nodes()}")
        print(
            f"edges: {len(edges)} (run {len(graph.edges('run'))}, "
            f"build {len(graph.edges('build'))})"
        )
        print(f"depth: {graph.depth()}")
        print(f"cycles: {len(cycles)}{'+' if len(cycles) == 100 else ''}")
        for cycle in cycles:
            print(f"  {' -> '.join([*cycle, cycle[0]])}")
    return 1 if summary.errors else 0


def cmd_verify(args: argparse.Namespace) -> int:
    with make_client() as client:
        checked = signing.verify(
            args.target, client=client, index_url=args.index, key_file=args.key
        )
    for line in checked.lines():
        print(line)
    return 0


def cmd_index(args: argparse.Namespace, state: State) -> int:
    if args.action == "verify":
        report = index_verify.verify_tree(state.index_dir)
        for line in report.problems:
            print(line)
        found = len(report.problems)
        counts = f"index: {report.projects} projects, {report.files} files"
        print(f"{counts}: {found} problem{'s' * (found != 1)}" if found else f"{counts}: ok")
        return 1 if found else 0
    if getattr(args, "action", None) == "key":
        key = signing.load_or_create_key(state.root)
        signing.publish_public_key(state.index_dir, key)
        print(signing.public_pem(key).decode(), end="")
        print(f"key id (sha256 of the public key): {signing.key_id(key)}", file=sys.stderr)
        return 0
    if getattr(args, "action", None) == "nginx-conf":
        try:
            print(nginx.config(state.index_dir, args.listen), end="")
        except ValueError as exc:
            raise WheelstockError(str(exc)) from exc
        return 0
    code = _publish(args, state)
    count = index.rebuild(state.index_dir)
    print(f"index: {count} projects at {state.index_dir / 'simple'}")
    return code


def cmd_serve(args: argparse.Namespace, state: State) -> int:
    index.rebuild(state.index_dir)
    try:
        serve.serve(state.index_dir, args.host, args.port)
    except OSError as exc:
        raise WheelstockError(f"cannot serve on {args.host}:{args.port}: {exc.strerror}") from exc
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, State], int]] = {
    "tick": cmd_tick,
    "status": cmd_status,
    "build": cmd_build,
    "pr": cmd_pr,
    "review": cmd_review,
    "graph": cmd_graph,
    "index": cmd_index,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state: State | None = None
    try:
        if args.command == "registry":
            return cmd_registry(args, None)
        if args.command == "build" and args.feedstock is not None:
            return build_checkout(args)
        if args.command == "verify":
            return cmd_verify(args)
        state = _state(args)
        return COMMANDS[args.command](args, state)
    except WheelstockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if state is not None:
            state.close()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))
