"""The dashboard is safe by default: a fixed root it never leaves, a launcher that takes no free text, read-only mode.

Each refusal is shown on the page, and nothing outside the root is read or written: a sentinel folder next to the
root holds real artifacts (a run, its analysis, the sample set) that the app would happily read if it followed a
path there; its files' access and modification times and its listing must stay as they were. A Python audit hook
also records every file the app opens from Python while a page runs.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from app_fixture import ANALYSIS, relocate, session_root, set_manifest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "app.py"
sys.path.insert(0, str(APP.parent))  # the app's own modules

import discover  # noqa: E402
import jobs  # noqa: E402
import ui  # noqa: E402

from ctrsink import api  # noqa: E402

torch.set_num_threads(1)
OUTSIDE = "outside the dashboard root"
_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args:
        if isinstance(args[0], (str, bytes, os.PathLike)):
            _opened.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # cannot be removed: it records only inside `opened()`


@contextmanager
def opened() -> Iterator[list[str]]:
    """The paths Python code opens or lists meanwhile (C++ readers such as Arrow's are not audited: see `Sentinel`)."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_root(tmp_path_factory.getbasetemp(), with_ablation=False)


def copy_tree(src: Path, dst: Path) -> None:
    # plain copies (no copystat): fresh access times, so a later read of any file shows in its atime
    shutil.copytree(src, dst, copy_function=shutil.copy, ignore=shutil.ignore_patterns(".*"))


class Sentinel:
    """A folder outside the root holding real artifacts; `untouched()` checks nothing in it was read or written."""

    def __init__(self, base: Path, path: Path) -> None:
        self.path = path
        copy_tree(base / "data", path / "data")
        copy_tree(base / "ctrsink", path / "ctrsink")
        relocate(path / "ctrsink", path / "data")
        self.atime_works = self._probe(path.parent / "atime_probe")
        self.before = self._snapshot()

    @staticmethod
    def _probe(file: Path) -> bool:
        """Whether this file system records reads in atime (relatime does for a file read after it was written)."""
        file.write_text("probe")
        before = file.stat().st_atime_ns
        file.read_text()
        return file.stat().st_atime_ns != before

    def _snapshot(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for p in [self.path, *self.path.rglob("*")]:
            s = p.lstat()
            out[str(p)] = (s.st_atime_ns if self.atime_works else 0, s.st_mtime_ns, s.st_size)
        return out

    def untouched(self, opened: list[str] | None = None) -> None:
        after = self._snapshot()
        assert set(after) == set(self.before), "files were created or removed next to the root"
        changed = [p for p in after if after[p] != self.before[p]]
        assert not changed, f"read or written outside the root: {changed[:5]}"
        inside = [p for p in opened or [] if Path(p).is_relative_to(self.path)]
        assert not inside, f"opened outside the root: {inside[:5]}"


def make_root(base: Path, tmp_path: Path) -> tuple[Path, Sentinel]:
    """ROOT (the sample set and the sink run with its analysis, pointing at each other) and a sentinel beside it."""
    root = tmp_path / "root"
    copy_tree(base / "data", root / "data")
    copy_tree(base / "ctrsink", root / "ctrsink")
    relocate(root / "ctrsink", root / "data")
    return root, Sentinel(base, tmp_path / "outside")


def open_page(root: Path, page: str, **state) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["root"] = str(root)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.error)


def text_of(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [w.value for w in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


# ------------------------------------------------------------------------------------------------ the public API


def test_app_imports_ctrsink_only_through_the_api() -> None:
    offending = []
    for file in sorted((REPO / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = (
                    [f"ctrsink.{a.name}" for a in node.names] if node.module == "ctrsink" else [node.module]
                )
            else:
                continue
            bad = [n for n in names if n.split(".")[0] == "ctrsink" and n != "ctrsink.api"]
            offending += [f"{file.relative_to(REPO)}:{node.lineno} imports {n}" for n in bad]
    assert not offending, offending


def test_run_file_names_come_from_one_place() -> None:
    from ctrsink import run

    assert (
        discover.RUN_FILES
        == run.RUN_RECORD_FILES
        == (
            run.CONFIG_FILE,
            run.RUN_FILE,
            run.METRICS_FILE,
            run.FINAL_METRICS_FILE,
        )
    )
    assert set(run.MODEL_DIRS) <= discover.SKIP_DIRS


# ------------------------------------------------------------------------------------------------ confinement


def test_confine_refuses_parents_absolute_paths_and_symlinks_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.json").write_text("{}")
    assert discover.confine(root, root / "sub" / ".." / "sub") == (root / "sub").resolve()
    for bad in (root / ".." / "..", root / "..", "/etc", root / "sub" / ".." / ".." / "outside"):
        with pytest.raises(discover.OutsideRoot, match=OUTSIDE):
            discover.confine(root, bad)
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "sub" / "secret.json").symlink_to(outside / "secret.json")
    (root / "inside").symlink_to(root / "sub", target_is_directory=True)  # a link within the root is fine
    assert discover.confine(root, root / "inside") == (root / "sub").resolve()
    for bad in (root / "link", root / "link" / "secret.json", root / "sub" / "secret.json"):
        with pytest.raises(discover.OutsideRoot, match=OUTSIDE):
            discover.confine(root, bad)
    with pytest.raises(discover.OutsideRoot, match="secret.json"):
        discover.confine_entries(root, root / "sub")  # a folder holding a link out is refused as a whole
    with pytest.raises(discover.OutsideRoot):
        discover.read_json(root, root / "sub" / "secret.json")
    found = discover.find_artifacts(root)
    assert [name for name, _ in found.refused] == ["link"]  # reported, never walked


@pytest.mark.parametrize("folder", ["../..", "..", "../outside", "/etc"])
def test_sidebar_folder_cannot_leave_the_root(base: Path, tmp_path: Path, folder: str) -> None:
    root, sentinel = make_root(base, tmp_path)
    with opened() as seen:
        at = open_page(root, "runs", folder=folder)
    assert f"Folder {folder!r}" in errors(at) and "showing the root instead" in errors(at)
    assert OUTSIDE in errors(at)
    assert at.selectbox(key="folder").value == "."
    assert at.dataframe[0].value["run"].tolist() == ["ctrsink"]  # the root's own runs, nothing from outside
    assert "ctrsink/analysis" in at.dataframe[0].value["analyses"].tolist()
    sentinel.untouched(seen)


def test_sidebar_offers_only_folders_under_the_root(base: Path, tmp_path: Path) -> None:
    root, sentinel = make_root(base, tmp_path)
    (root / "link").symlink_to(sentinel.path, target_is_directory=True)
    at = open_page(root, "runs")
    options = at.selectbox(key="folder").options
    assert options[0] == "." and "ctrsink" in options and "ctrsink/analysis" in options
    assert not any(o.startswith(("link", "..", "/")) for o in options)
    assert "checkpoint" not in " ".join(options)
    assert "**link**" in errors(at) and OUTSIDE in errors(at)  # the link out is reported on the page
    at.selectbox(key="folder").set_value("ctrsink").run()
    assert not at.exception and at.dataframe[0].value["run"].tolist() == ["."]
    sentinel.untouched()


@pytest.mark.parametrize("target", ["etc", "sentinel"])
def test_manifest_pointing_outside_is_refused(base: Path, tmp_path: Path, target: str) -> None:
    root, sentinel = make_root(base, tmp_path)
    away = "/etc" if target == "etc" else str(sentinel.path / "ctrsink")
    data = "/etc" if target == "etc" else str(sentinel.path / "data")
    evil = root / "evil"  # an analysis outside any run folder: no run to fall back on
    shutil.move(str(root / "ctrsink" / ANALYSIS), evil)
    shutil.rmtree(root / "ctrsink")
    set_manifest(evil, run_dir=away, data_dir=data)
    with opened() as seen:
        at = open_page(root, "explorer")
    text = errors(at)
    assert "**Run of evil**" in text and f"refused: {away}" in text and OUTSIDE in text
    assert f"refused: {data}" in text  # the sample set the manifest names
    assert at.get("plotly_chart")  # what the analysis itself holds still draws
    sentinel.untouched(seen)
    for page in ("attention", "inter_sink"):
        at = open_page(root, page)
        assert at.get("plotly_chart"), page
    sentinel.untouched()


def test_run_json_pointing_outside_is_refused(base: Path, tmp_path: Path) -> None:
    root, sentinel = make_root(base, tmp_path)
    info = json.loads((root / "ctrsink" / api.RUN_FILE).read_text())
    (root / "ctrsink" / api.RUN_FILE).write_text(
        json.dumps({**info, "data_dir": str(sentinel.path / "data")})
    )
    with opened() as seen:
        at = open_page(root, "explorer")
    text = errors(at)
    assert f"refused: {sentinel.path / 'data'}" in text and OUTSIDE in text  # rescoring would load that data
    assert "model of" in text
    assert at.get("plotly_chart")  # the timeline still comes from the analysis' own sample set
    sentinel.untouched(seen)


def test_symlinks_out_of_the_root_are_refused(base: Path, tmp_path: Path) -> None:
    root, sentinel = make_root(base, tmp_path)
    linked = root / "linked_analysis"
    copy_tree(root / "ctrsink" / ANALYSIS, linked)
    (linked / "role_mass.parquet").unlink()
    (linked / "role_mass.parquet").symlink_to(sentinel.path / "ctrsink" / ANALYSIS / "role_mass.parquet")
    (root / "ctrsink" / "more").symlink_to(sentinel.path / "ctrsink", target_is_directory=True)
    with opened() as seen:
        at = open_page(root, "attention")
    text = errors(at)
    assert "**linked_analysis**" in text and "role_mass.parquet" in text and OUTSIDE in text
    assert "**ctrsink/more**" in text
    assert at.get("plotly_chart")  # the good analysis still draws
    sentinel.untouched(seen)


# ------------------------------------------------------------------------------------------------ the launcher


def test_overrides_accept_only_known_keys_with_typed_values() -> None:
    assert api.validated_overrides(
        [" epochs = 2", "lr=1e-4", "behavior_selection=similarity", "num_threads=1"]
    ) == [
        "epochs=2",
        "lr=0.0001",
        "behavior_selection=similarity",
        "num_threads=1",
    ]
    refused = {
        "seed=1 --out ../elsewhere": "expected an integer",
        "epochs=2; rm -rf /": "expected an integer",
        "backbone=/etc/passwd": "is not one of",
        "srp4ctr.encoder=../x": "free-text options",
        "prompts.pos=hi": "free-text options",
        "use_sink=true": "decided by the variant",
        "nonsense=1": "unknown config option",
        "--out=x": "expected key=value",
        "lr=inf": "expected a number",
        "two_stage=yes": "decided by the variant",
        "split_layer=yes": "expected true or false",
    }
    for pair, message in refused.items():
        with pytest.raises(api.CtrSinkError, match=message):
            api.validated_overrides([pair])
    with pytest.raises(api.CtrSinkError, match="given twice"):
        api.validated_overrides(["epochs=1", "epochs=2"])


def test_launch_refuses_paths_outside_and_free_text(base: Path, tmp_path: Path) -> None:
    root, sentinel = make_root(base, tmp_path)
    data = root / "data"
    for name in ("../elsewhere", "a/b", "..", ".hidden", "/tmp/x", "ctrsink", ""):
        with pytest.raises(ValueError, match="output folder"):
            jobs.build_command(root, data, ["baseline"], [1], name)
    with pytest.raises(discover.OutsideRoot):
        jobs.build_command(root, sentinel.path / "data", ["baseline"], [1], "new")
    with pytest.raises(discover.OutsideRoot):
        jobs.build_command(
            root, data, ["baseline"], [1], "new", config=sentinel.path / "ctrsink" / "config.yaml"
        )
    with pytest.raises(api.CtrSinkError, match="expected an integer"):
        jobs.launch(root, data, ["baseline"], [1], "new", ["seed=1 --out ../elsewhere"])
    with pytest.raises(api.CtrSinkError, match="unknown variant"):
        jobs.build_command(root, data, ["baseline;ls"], [1], "new")
    cmd = jobs.build_command(root, data, ["baseline"], [1, 2], "new", ["epochs=1"])
    assert cmd[1:] == [
        "-m",
        "ctrsink",
        "ablate",
        "--data",
        str(data.resolve()),
        "--variants",
        "baseline",
        "--seeds",
        "1,2",
        "--out",
        str((root / "new").resolve()),
        "--set",
        "epochs=1",
    ]
    assert not (root / "new").exists() and not (tmp_path / "elsewhere").exists()
    sentinel.untouched()


def test_ablations_page_refuses_an_injected_override(base: Path, tmp_path: Path) -> None:
    root, sentinel = make_root(base, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    at = open_page(root, "ablations")
    at.text_area(key="abl_overrides").input("seed=1 --out ../elsewhere").run()
    assert (
        "Not startable: config override 'seed': expected an integer, got '1 --out ../elsewhere'"
        in text_of(at)
    )
    assert at.button(key="abl_start").disabled
    at.text_area(key="abl_overrides").input("epochs=1").run()
    at.text_input(key="abl_out").input("../elsewhere").run()
    assert "Not startable: output folder '../elsewhere'" in text_of(at)
    assert at.button(key="abl_start").disabled
    at.text_input(key="abl_out").input("fine").run()
    assert not at.button(key="abl_start").disabled  # a valid launch is possible (not started here)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (root / "fine").exists()
    sentinel.untouched()


def test_read_only_hides_launching(base: Path, tmp_path: Path) -> None:
    assert ui.parse_args(["--root", "x", "--read-only"]).read_only
    assert not ui.parse_args(["--root", "x"]).read_only
    root, sentinel = make_root(base, tmp_path)
    at = open_page(root, "ablations", read_only=True)
    assert not [b for b in at.button if b.key == "abl_start"]
    assert not [t for t in at.text_area if t.key == "abl_overrides"]
    assert "read-only" in "\n".join(str(i.value) for i in at.info)
    assert "read-only" in "\n".join(str(c.value) for c in at.caption)  # the sidebar says so too
    sentinel.untouched()
