"""The `farm` command: every error is one line naming what to fix (no traceback); `farm results
--download` saves images, results.jsonl and the contact sheet."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from farm import cli
from farm.errors import StackError
from farm.local.servers import free_port


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("farm: error: "), err
    return lines[0]


def test_missing_file_is_one_line_in_a_real_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    res = subprocess.run(
        [sys.executable, "-m", "farm.cli", "submit", "missing.yaml"],
        cwd=tmp_path,
        env={**env, "FARM_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert _one_line(res.stderr) == "farm: error: no such file: missing.yaml"


def test_bad_campaign_files_name_the_place(env, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  prompts: [a cat\n  seeds: 2\n")
    code, err = _run(capsys, "submit", str(bad))
    line = _one_line(err)
    assert code == 2 and "bad.yaml: not valid YAML at line 3" in line
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"prompt": "one"}\n{"prompt": \n')
    code, err = _run(capsys, "submit", str(jsonl))
    assert code == 2 and "jobs.jsonl:2: not JSON" in _one_line(err)
    code, err = _run(capsys, "submit", str(tmp_path))
    assert code == 2 and f"cannot read {tmp_path}" in _one_line(err)


def test_settings_and_connection_errors(env, capsys):
    env.setenv("FARM_API_PORT", "abc")
    code, err = _run(capsys, "ls")
    assert code == 2 and "FARM_API_PORT" in _one_line(err) and "'abc'" in err
    env.delenv("FARM_API_PORT")
    code, err = _run(capsys, "ls")  # no URL and no stack
    assert code == 2 and "run `farm up`" in _one_line(err)
    env.setenv("FARM_API_URL", f"http://127.0.0.1:{free_port()}")
    env.setenv("FARM_API_TOKEN", "whatever")
    code, err = _run(capsys, "ls")
    line = _one_line(err)
    assert code == 1 and "unreachable" in line and "farm up" in line and "FARM_API_URL" in line


def test_debug_shows_the_traceback(env, capsys):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "submit", "missing.yaml"])
    env.setenv("FARM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["submit", "missing.yaml"])


def test_a_bug_is_still_one_line(env, capsys):
    def boom(settings, args):
        raise RuntimeError("boom\nsecond line")

    env.setitem(cli.COMMANDS, "limits", boom)
    code, err = _run(capsys, "limits")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error: RuntimeError: boom: second line" in err and "--debug" in err


def test_a_long_stack_error_keeps_its_first_and_last_lines():
    e = StackError("worker-prior-1 exited while starting:\nlog line\n\nModelError: no such folder")
    assert cli.error_line(e) == "worker-prior-1 exited while starting: ModelError: no such folder"


@pytest.mark.slow
def test_results_download_and_api_errors(stack, api_url, tokens, alice, env, capsys, tmp_path):
    env.setenv("FARM_API_URL", api_url)
    env.setenv("FARM_API_TOKEN", tokens["alice"])
    handle = alice.submit_campaign(
        grid={"prompts": ["a red cat", "قطة حمراء"], "seeds": [1, 2]},
        defaults={"height": 64, "width": 64, "num_inference_steps": 2},
    )
    handle.wait(timeout=300)
    # Bob cannot fetch Alice's sheet; a wrong token and an unknown id are one line each.
    resp = alice.http.get(
        f"/v1/campaigns/{handle.id}/contact_sheet.png",
        headers={"Authorization": f"Bearer {tokens['bob']}"},
    )
    assert resp.status_code == 404
    out = tmp_path / "dl"
    from tests.waiting import wait_until

    # The sheet is written a moment after the last job: the download says so until then.
    wait_until(
        lambda: alice.http.get(f"/v1/campaigns/{handle.id}/contact_sheet.png").status_code == 200,
        60,
        0.2,
        "the contact sheet",
    )
    assert cli.main(["results", handle.id, "--download", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "downloaded 4 images" in printed and "contact_sheet.png" in printed
    assert len(list(out.glob("*-seed*.png"))) == 4
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["seed"] for r in rows} == {1, 2}
    with Image.open(out / "contact_sheet.png") as im:
        from farm.sheet import SHEET_THUMB, Geometry

        assert im.size == Geometry(SHEET_THUMB, 2, 2, True, True).size  # 2 prompts x 2 seeds
    stored = alice.http.get(f"/v1/campaigns/{handle.id}/contact_sheet.png").content
    assert (out / "contact_sheet.png").read_bytes() == stored
    Image.open(io.BytesIO(stored)).verify()

    env.setenv("FARM_API_TOKEN", "not-a-token")
    code, err = _run(capsys, "results", handle.id)
    assert code == 2 and "FARM_API_TOKEN" in _one_line(err)
    env.setenv("FARM_API_TOKEN", tokens["bob"])
    code, err = _run(capsys, "results", handle.id)
    line = _one_line(err)
    assert code == 2 and f"unknown campaign {handle.id}" in line and "farm ls" in line
