"""Expanding INPUT items: files, folders (recursive), globs, duplicates, exclusions, problems."""

from __future__ import annotations

import os

import pytest

from covidedge.inputs import expand_inputs, is_glob


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "scans"
    for rel in ("b.png", "a.JPG", "notes.txt", "sub/c.dcm", "sub/deeper/d.tiff", ".hidden.png",
                ".cache/e.png", "sub/f.PNG"):
        touch(root / rel)
    return root


def names(expanded, root):
    return [os.path.relpath(p, root) for p in expanded.files]


def test_folder_is_searched_recursively_in_sorted_order(tree):
    out = expand_inputs([tree])
    assert names(out, tree) == ["a.JPG", "b.png", "sub/c.dcm", "sub/f.PNG", "sub/deeper/d.tiff"]
    assert out.problems == [] and len(out) == 5


def test_non_recursive_stays_in_the_folder(tree):
    assert names(expand_inputs([tree], recursive=False), tree) == ["a.JPG", "b.png"]


def test_explicit_files_keep_their_order_and_any_suffix(tree):
    out = expand_inputs([tree / "notes.txt", tree / "b.png", tree / "a.JPG"])
    assert names(out, tree) == ["notes.txt", "b.png", "a.JPG"]


def test_duplicates_are_kept_once_at_their_first_place(tree):
    out = expand_inputs([tree / "sub" / "c.dcm", tree, str(tree / "b.png")])
    assert names(out, tree) == ["sub/c.dcm", "a.JPG", "b.png", "sub/f.PNG", "sub/deeper/d.tiff"]


def test_globs_expand_and_filter_by_suffix(tree):
    assert is_glob("x/*.png") and not is_glob("x/a.png")
    out = expand_inputs([str(tree / "*")])
    # the folder 'sub' matched by * is searched too; notes.txt and hidden files are not images
    assert names(out, tree) == ["a.JPG", "b.png", "sub/c.dcm", "sub/f.PNG", "sub/deeper/d.tiff"]
    out = expand_inputs([str(tree / "**" / "*.dcm")])
    assert names(out, tree) == ["sub/c.dcm"]


def test_excluded_output_folder_is_not_read(tree):
    touch(tree / "out" / "b_overlay.png")
    out = expand_inputs([tree], exclude=[tree / "out"])
    assert not any("overlay" in str(p) for p in out.files) and len(out) == 5


def test_items_that_give_nothing_become_problems(tmp_path, tree):
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "textonly" / "readme.txt")
    out = expand_inputs([tmp_path / "missing.png", tmp_path / "empty", tmp_path / "textonly",
                         str(tmp_path / "*.bmp"), tree / "b.png"])
    assert names(out, tree) == ["b.png"]
    msgs = [str(p) for p in out.problems]
    assert len(msgs) == 4
    assert msgs[0].endswith("missing.png: no such file or folder")
    assert "empty: folder has no images" in msgs[1] and ".dcm" in msgs[1]
    assert "textonly: folder has no images" in msgs[2]
    assert msgs[3].endswith(
        "*.bmp: pattern matches no image files (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .dcm)")


def test_broken_link_is_a_problem(tmp_path):
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "nowhere.png")
    out = expand_inputs([link])
    assert out.files == [] and "neither a file nor a folder" in str(out.problems[0])


def test_glob_through_symlink_loops_ends_and_reports_them(tmp_path, monkeypatch):
    import os

    root = tmp_path / "share"
    touch(root / "a" / "x.png")
    touch(root / "a" / "b" / "y.png")
    (root / "a" / "b" / "up").symlink_to(root / "a")  # loops back to an ancestor
    (root / "a" / "b" / "top").symlink_to(root)  # a second loop: old globbing went exponential
    (root / "a" / "self").symlink_to(root / "a")
    listed = []
    real_scandir = os.scandir

    def scandir(path="."):
        listed.append(os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    out = expand_inputs([str(root / "**" / "*.png")])
    monkeypatch.undo()
    # each of the 3 real folders is listed once (old globbing followed the loops: exponential)
    assert len(listed) == len(set(listed)) <= 3, listed
    assert names(out, root) == ["a/b/y.png", "a/x.png"]  # sorted paths, as glob gives
    msgs = [str(p) for p in out.problems]
    assert msgs and all("symbolic link loop" in m and "not followed" in m for m in msgs)
    assert any(m.startswith(str(root / "a" / "b" / "up")) for m in msgs)


def test_folder_walk_does_not_follow_links_so_loops_cannot_trap_it(tmp_path):
    root = tmp_path / "share"
    touch(root / "a" / "x.png")
    (root / "a" / "again").symlink_to(root)
    out = expand_inputs([root])
    assert names(out, root) == ["a/x.png"] and out.problems == []


def test_glob_without_double_star_still_matches_per_level(tree):
    out = expand_inputs([str(tree / "*" / "*.dcm")])
    assert names(out, tree) == ["sub/c.dcm"]
    out = expand_inputs([str(tree / "s?b" / "deeper" / "*")])
    assert names(out, tree) == ["sub/deeper/d.tiff"]


def _deny(monkeypatch, denied):
    """Make os.scandir fail with EACCES for the folder ``denied`` (tests run as root here,
    for whom permission bits do not block reading)."""
    real = os.scandir

    def scandir(path="."):
        if os.path.realpath(os.fspath(path)) == os.path.realpath(denied):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("as_glob", [False, True])
def test_unreadable_subfolder_is_reported_like_a_bad_file(tree, monkeypatch, as_glob):
    _deny(monkeypatch, tree / "sub" / "deeper")
    item = str(tree / "**" / "*.tiff") if as_glob else tree
    out = expand_inputs([item])
    if as_glob:
        assert out.files == []
    else:
        assert names(out, tree) == ["a.JPG", "b.png", "sub/c.dcm", "sub/f.PNG"]
    msgs = [str(p) for p in out.problems]
    assert len(msgs) == 1 and msgs[0].startswith(str(tree / "sub" / "deeper") + ": ")
    assert "folder cannot be read (Permission denied)" in msgs[0] and "permissions" in msgs[0]


def test_unreadable_top_folder_is_a_problem(tree, monkeypatch):
    _deny(monkeypatch, tree)
    out = expand_inputs([tree])
    assert out.files == [] and len(out.problems) == 1
    assert "folder cannot be read (Permission denied)" in str(out.problems[0])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permission bits")
def test_unreadable_subfolder_by_permission_bits(tree):
    deeper = tree / "sub" / "deeper"
    deeper.chmod(0)
    try:
        out = expand_inputs([tree])
    finally:
        deeper.chmod(0o755)
    assert any("folder cannot be read" in str(p) for p in out.problems)


@pytest.mark.parametrize("as_glob", [False, True])
def test_broken_links_inside_a_folder_are_problems_not_silent_skips(tmp_path, as_glob):
    # issue 22, item 23: "1 image: 1 ok", exit 0, while a linked scan was missing
    folder = tmp_path / "scans"
    touch(folder / "a.png")
    (folder / "b.png").symlink_to(tmp_path / "gone" / "b.png")
    (folder / "notes.txt").symlink_to(tmp_path / "gone" / "notes.txt")  # not an image name: ignored
    out = expand_inputs([str(folder / "*.png") if as_glob else folder])
    assert [p.name for p in out.files] == ["a.png"]
    assert [str(p) for p in out.problems] == [
        f"{folder / 'b.png'}: is a broken symbolic link (to {tmp_path / 'gone' / 'b.png'}); not read"]


def test_a_broken_link_in_a_folder_makes_infer_exit_1(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from covidedge.cli.infer import command
    from tests.graphs import tiny_models, xray

    cls, _ = tiny_models(tmp_path / "models")
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(xray()).save(folder / "a.png")
    (folder / "b.png").symlink_to(tmp_path / "gone.png")
    res = CliRunner().invoke(command, [str(folder), "-c", str(cls)])
    assert res.exit_code == 1, res.output
    assert "skipped: " in res.output and "b.png: is a broken symbolic link" in res.output
