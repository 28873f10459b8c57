"""The route table on disk: changes, history, rollback targets, the expected-revision
check, bad targets, and a file that stays whole when its writer is killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from eventually import eventually

from localserve.errors import BadRequestError, ConflictError, NotFoundError
from localserve.routing.table import (
    RevisionConflictError,
    RouteNotFoundError,
    RouteTable,
    TableData,
    Target,
)

ROOT = Path(__file__).resolve().parents[2]


def test_a_route_records_every_change_and_survives_a_reopen(tmp_path: Path) -> None:
    table = RouteTable(tmp_path)
    table.set("assistant", [Target("a:v1", 1)], who="cli", reason="first")
    table.set("Assistant", [Target("a:v1", 90), Target("b:v2", 10)], who="api", reason="try b")
    route = RouteTable(tmp_path).get("assistant")
    assert route.name == "assistant:latest"
    assert route.revision == 2
    assert route.targets == [Target("a:v1", 90), Target("b:v2", 10)]
    assert [(c.revision, c.who, c.reason) for c in route.history] == [
        (1, "cli", "first"),
        (2, "api", "try b"),
    ]
    assert route.history[1].old == [Target("a:v1", 1)]
    assert route.shares() == {"a:v1": 0.9, "b:v2": 0.1}


def test_rollback_targets_are_the_previous_state_or_a_named_revision(tmp_path: Path) -> None:
    table = RouteTable(tmp_path)
    table.set("assistant", [Target("a:v1", 1)], who="cli")
    table.set("assistant", [Target("b:v2", 1)], who="cli")
    table.set("assistant", [Target("c:v3", 1)], who="cli")
    assert table.rollback_targets("assistant", None) == (
        [Target("b:v2", 1)],
        "rollback to before revision 3",
    )
    assert table.rollback_targets("assistant", 1)[0] == [Target("a:v1", 1)]
    with pytest.raises(NotFoundError, match="no revision 9"):
        table.rollback_targets("assistant", 9)
    table.set("other", [Target("a:v1", 1)], who="cli")
    with pytest.raises(ConflictError, match="no earlier state"):
        table.rollback_targets("other", None)


def test_an_edit_naming_a_stale_revision_is_a_conflict_and_writes_nothing(
    tmp_path: Path,
) -> None:
    table = RouteTable(tmp_path)
    table.set("assistant", [Target("a:v1", 1)], who="cli", expected_revision=0)
    with pytest.raises(RevisionConflictError, match="revision 1, not 0"):
        table.set("assistant", [Target("b:v2", 1)], who="cli", expected_revision=0)
    assert table.get("assistant").targets == [Target("a:v1", 1)]
    assert len(table.get("assistant").history) == 1


def test_concurrent_edits_with_one_expected_revision_let_exactly_one_win(
    tmp_path: Path,
) -> None:
    table = RouteTable(tmp_path)
    table.set("assistant", [Target("a:v1", 1)], who="cli")
    others = [RouteTable(tmp_path) for _ in range(6)]  # as if several processes
    results: list[str] = []
    barrier = threading.Barrier(len(others))

    def edit(index: int, own: RouteTable) -> None:
        barrier.wait()
        try:
            own.set("assistant", [Target(f"m:{index}", 1)], who="api", expected_revision=1)
            results.append("ok")
        except RevisionConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=edit, args=(i, t)) for i, t in enumerate(others)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["conflict"] * 5 + ["ok"]
    route = RouteTable(tmp_path).get("assistant")
    assert route.revision == 2 and len(route.history) == 2


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([], "at least one target"),
        ([Target("a:v1", -1)], "must be a number >= 0"),
        ([Target("a:v1", 0), Target("b:v2", 0)], "all zero"),
        ([Target("a:v1", float("nan"))], "must be a number >= 0"),
        ([Target("assistant", 1)], "cannot point at itself"),
        ([Target("a:v1", 1), Target("A:V1", 2)], "named twice"),
    ],
)
def test_bad_targets_are_refused_naming_the_problem(
    tmp_path: Path, targets: list[Target], message: str
) -> None:
    table = RouteTable(tmp_path)
    with pytest.raises(BadRequestError, match=message):
        table.set("assistant", targets, who="cli")
    assert not (tmp_path / "routes.json").exists()


def test_targets_from_json_refuse_wrong_types() -> None:
    with pytest.raises(BadRequestError, match="model"):
        Target.from_json({"weight": 1})
    with pytest.raises(BadRequestError, match="weight of a must be a number"):
        Target.from_json({"model": "a", "weight": "heavy"})
    with pytest.raises(BadRequestError, match="weight of a must be a number"):
        Target.from_json({"model": "a", "weight": True})


def test_delete_removes_the_route_and_an_unknown_one_is_404(tmp_path: Path) -> None:
    table = RouteTable(tmp_path)
    table.set("assistant", [Target("a:v1", 1)], who="cli")
    table.delete("assistant")
    with pytest.raises(RouteNotFoundError):
        table.get("assistant")
    with pytest.raises(RouteNotFoundError):
        table.delete("assistant")


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from localserve.routing.table import RouteTable, Target
    table = RouteTable(Path(sys.argv[1]))
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        # a big route, so each write takes a while and a kill lands inside one
        targets = [Target(f"m{i}-{k}:v", k + 1) for k in range(16)]
        table.set("assistant", targets, who="cli", reason="x" * 400)
    """
)


def test_a_writer_killed_mid_write_leaves_a_whole_table(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites the table in a loop, several times: the file is
    always a whole table (the state before or after one change), and the next writer
    takes the lock and carries on from it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    revisions = []
    for round_ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
            table_file = tmp_path / "routes.json"
            eventually(table_file.exists, 30, what="the first write")
            start = RouteTable(tmp_path).data
            before = start.routes["assistant:latest"].revision if start.routes else 0
            wanted = before + round_ + 2
            eventually(
                lambda wanted=wanted: RouteTable(tmp_path).get("assistant").revision > wanted,
                30,
                what="a few writes",
            )
            time.sleep(0.01 * round_)  # kill at a different point each round
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
        data = TableData.from_json((tmp_path / "routes.json").read_bytes())
        route = data.routes["assistant:latest"]
        assert len(route.targets) == 16
        assert route.history[-1].revision == route.revision
        assert [c.revision for c in route.history] == list(
            range(route.revision - len(route.history) + 1, route.revision + 1)
        )
        revisions.append(route.revision)
    assert revisions == sorted(revisions)
    # A new writer is not blocked by a lock the killed one held.
    table = RouteTable(tmp_path)
    table.set("assistant", [Target("a:v1", 1)], who="cli")
    assert (
        json.loads((tmp_path / "routes.json").read_text())["routes"]["assistant:latest"]["revision"]
        == revisions[-1] + 1
    )
