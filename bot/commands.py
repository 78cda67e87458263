"""``@wheelstock`` commands on the bot's PRs: who may give them, acting once on each comment.

Only a maintainer listed in the project's registry entry is obeyed; anyone else is answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from bot import feedstock
from bot.context import Bot, Summary
from bot.errors import WheelstockError
from bot.feedstock import FEEDSTOCK_FILE
from bot.forge import BOT_HANDLE, Comment, PullRequest
from bot.prs import (
    COMMANDS,
    parse_commands,
)
from bot.registry import Entry


def answer_commands(
    bot: Bot,
    entries: Mapping[str, Entry],
    summary: Summary,
    rebuild: Callable[[Entry], str],
    *,
    commented: Iterable[int] | None = None,
) -> None:
    """Act on ``@wheelstock`` commands left on the bot's PRs since the last tick.

    Only a maintainer listed in the project's registry entry is obeyed; anyone else gets a
    reply saying so. Each comment is acted on once: the newest handled id is kept per PR.
    ``rebuild(entry)`` arranges a new build of the feedstock's main head and says what it did.
    ``commented``: the PRs the forge says got comments since the last tick (None: look at
    every PR), so a tick where nobody wrote reads no thread.
    """
    ours = {i.pr_number for i in bot.state.intents() if i.pr_number is not None}
    if commented is None:
        prs = bot.forge.pull_requests()
    else:
        prs = [bot.forge.get_pr(number) for number in sorted(set(commented) & ours)]
    for pr in prs:
        if pr.state == "closed" or pr.number not in ours:
            continue
        seen = bot.state.last_comment_seen(pr.number)
        for comment in bot.forge.comments(pr.number, after=seen):
            commands = parse_commands(comment.body) if comment.author != BOT_HANDLE else []
            entry = entries.get(pr.project)
            if commands and (entry is None or not entry.is_maintainer(comment.author)):
                # One reply per comment, however many commands it holds.
                commands = commands[:1]
            for command in commands:
                reply = _command(bot, entry, pr, comment, command, rebuild)
                bot.forge.comment(pr.number, BOT_HANDLE, reply)
                summary.commands += 1
                bot.echo(f"PR #{pr.number}: @{comment.author} {command}: {reply}")
                pr = bot.forge.get_pr(pr.number)
            bot.state.see_comment(pr.number, comment.id)


def _command(
    bot: Bot,
    entry: Entry | None,
    pr: PullRequest,
    comment: Comment,
    command: str,
    rebuild: Callable[[Entry], str],
) -> str:
    who = f"@{comment.author}"
    if entry is None:
        return f"{who}: {pr.project} has no registry entry any more; commands are ignored."
    if not entry.is_maintainer(comment.author):
        listed = ", ".join(f"@{m}" for m in entry.maintainers)
        return (
            f"{who}: only the maintainers listed for {entry.name} ({listed}) can give "
            "wheelstock commands; ignored."
        )
    if command not in COMMANDS:
        known = ", ".join(f"`@wheelstock {c}`" for c in COMMANDS)
        return f"{who}: unknown command `{command}`; wheelstock knows {known}."
    try:
        if command == "close":
            if pr.state != "open":
                return f"{who}: this pull request is already {pr.state}."
            bot.forge.close_pr(pr.number, comment.author)
            return f"Closed at the request of {who}."
        if command == "rebuild":
            return f"{who}: {rebuild(entry)}"
        return f"{who}: {_rerender_branch(bot, entry, pr)}"
    except WheelstockError as exc:
        return f"{who}: `{command}` failed: {exc}"


def _rerender_branch(bot: Bot, entry: Entry, pr: PullRequest) -> str:
    if pr.state != "open":
        return f"this pull request is {pr.state}; there is no branch to re-render."
    where = f"{entry.name}-feedstock/{FEEDSTOCK_FILE}@{pr.branch}"
    text = bot.forge.read_file(entry.name, FEEDSTOCK_FILE, pr.branch)
    files = feedstock.rerender(
        bot.template_dir, text, maintainers=entry.maintainers, consent=entry.consent, where=where
    )
    newest = feedstock.template_version(bot.template_dir)
    sha = bot.forge.update_branch(
        entry.name,
        pr.branch,
        files,
        f"Re-render with feedstock-template v{newest}\n\nAsked for in PR #{pr.number}.",
    )
    if sha is None:
        return f"the branch already matches feedstock-template v{newest}; nothing to re-render."
    return f"re-rendered with feedstock-template v{newest} in {sha[:12]}."
