"""The one "code changed" mark is each stage's revision (``stages.py``): Dagster staleness, row reuse,
store roots and run folders all read it. This test makes a code change that forgets the revision
visible: it records, per stage, the revision and a hash of the sources that decide its output
(``Stage.code``), and fails when those sources change while the revision does not.

When it fails, decide: if the change alters what the stage writes, bump the stage's revision in
``stages.py``; if it cannot (a refactor, a comment), keep the revision. Either way, record the new
sources with ``python tests/test_stage_revisions.py --record`` and commit ``tests/stage_sources.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pixart_pipeline
from pixart_pipeline.stages import STAGES

RECORD = Path(__file__).with_name("stage_sources.json")
PACKAGE = Path(pixart_pipeline.__file__).parent


def sources_digest(code: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in sorted(code):
        digest.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def current() -> dict[str, dict[str, str]]:
    return {s.name: {"revision": s.revision, "sources": sources_digest(s.code)} for s in STAGES}


def test_every_stage_names_the_code_that_decides_its_output():
    for stage in STAGES:
        assert stage.code, f"{stage.name} lists no source modules"
        missing = [name for name in stage.code if not (PACKAGE / name).is_file()]
        assert not missing, f"{stage.name}: Stage.code names modules that do not exist: {missing}"


def test_a_stage_whose_code_changed_bumped_its_revision_or_was_recorded():
    recorded = json.loads(RECORD.read_text())
    problems = []
    for name, now in current().items():
        before = recorded.get(name)
        if before is None:
            problems.append(f"{name}: not recorded")
        elif now["sources"] != before["sources"] and now["revision"] == before["revision"]:
            problems.append(f"{name}: its sources changed but its revision is still {now['revision']!r}; "
                            "bump it in stages.py if the change alters what the stage writes")
        elif now != before:
            problems.append(f"{name}: revision {before['revision']!r} -> {now['revision']!r}, not recorded")
    assert not problems, ("\n".join(problems) + "\nthen: python tests/test_stage_revisions.py --record")


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    RECORD.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {RECORD}")
