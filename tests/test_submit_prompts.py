"""`farm submit PROMPTS.txt|.csv|.parquet --seeds --model --set`: the campaign a prompts file
makes, every error naming the line or the option to fix, and one real submission."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from farm import cli
from farm.cli import prompts
from farm.errors import InvalidJob


def _error(capsys, *argv: str) -> str:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (code, err)
    return err.removeprefix("farm: error: ")


def test_a_text_file_is_one_prompt_a_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeffa red cat\n\n  a blue dog  \nقطة حمراء\n", encoding="utf-8")
    body, ignored = prompts.campaign(
        path,
        seeds="4",
        model="kandinsky-2.2",
        sets=["height=768", "guidance_scale=7.5", "negative_prompt=blurry, dark", "x=true"],
    )
    assert body == {
        "name": "prompts.txt",
        "grid": {"prompts": ["a red cat", "a blue dog", "قطة حمراء"], "seeds": 4},
        "defaults": {
            "height": 768,
            "guidance_scale": 7.5,
            "negative_prompt": "blurry, dark",
            "x": True,
            "model": "kandinsky-2.2",
        },
    }
    assert ignored == []
    # No options: one drawn seed each, the API's own defaults, a name when given.
    body, _ = prompts.campaign(path, name="run 1")
    assert body["grid"]["seeds"] == 1 and body["defaults"] == {} and body["name"] == "run 1"


def test_csv_and_parquet_read_their_prompt_column(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text('\ufeffid,Prompt,notes\n1,"a cat, sitting",x\n2,a dog,\n', encoding="utf-8")
    body, ignored = prompts.campaign(csv_path, seeds="0-2")
    assert body["grid"] == {"prompts": ["a cat, sitting", "a dog"], "seeds": [0, 1, 2]}
    assert ignored == ["id", "notes"]
    table = pa.table({"prompt": ["one", "two", "three"], "score": [1, 2, 3]})
    pq.write_table(table, tmp_path / "list.parquet")
    body, ignored = prompts.campaign(tmp_path / "list.parquet", seeds="7,42")
    assert body["grid"] == {"prompts": ["one", "two", "three"], "seeds": [7, 42]}
    assert ignored == ["score"]


@pytest.mark.parametrize(
    "text, seeds",
    [("4", 4), ("0-3", [0, 1, 2, 3]), ("42,", [42]), ("1, 5-6,9", [1, 5, 6, 9]), (None, 1)],
)
def test_seeds_are_a_count_ranges_or_a_list(text, seeds):
    assert prompts.parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, words",
    [
        ("four", "expected a count (4), a range (0-3) or a list"),
        ("1,x", "got '1,x'"),
        ("5-2", "range 5-2 runs backwards: write 2-5"),
        ("-3", "expected a count"),
        ("0-2000000", "at most 1000000 seeds"),
        (",", "expected a count"),
    ],
)
def test_bad_seeds_name_the_option(text, words):
    with pytest.raises(InvalidJob, match=re.escape(words)) as e:
        prompts.parse_seeds(text)
    assert e.value.field == "--seeds"


def test_set_values_are_json_where_they_parse():
    got = prompts.parse_sets(
        ["a=1", "b=2.5", "c=false", "d=null", 'e="42"', "f=[1, 2]", "g=NaN", "h=ddim", "i=x=y"]
    )
    assert got == {
        "a": 1,
        "b": 2.5,
        "c": False,
        "d": None,
        "e": "42",
        "f": [1, 2],
        "g": "NaN",
        "h": "ddim",
        "i": "x=y",
    }


@pytest.mark.parametrize(
    "sets, field, words",
    [
        (["height"], "--set", "expected KEY=VALUE, as height=768 (got 'height')"),
        (["=5"], "--set", "expected KEY=VALUE"),
        (["prompt=x"], "--set prompt", "the prompts come from the file"),
        (["seed=3"], "--set seed", "seeds are --seeds"),
    ],
)
def test_bad_set_options_name_the_option(sets, field, words):
    with pytest.raises(InvalidJob, match=re.escape(words)) as e:
        prompts.parse_sets(sets)
    assert e.value.field == field


def test_bad_files_name_the_file_the_line_or_the_columns(tmp_path):
    def refused(name: str, data: str | bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        with pytest.raises(InvalidJob) as e:
            prompts.read_prompts(path)
        return str(e.value)

    assert refused("empty.txt", "\n  \n") == "empty.txt: holds no prompts (no non-blank line)"
    assert (
        refused("empty.csv", "") == "empty.csv: holds no prompts (no rows in its 'prompt' column)"
    )
    assert refused("header.csv", "prompt\n") == (
        "header.csv: holds no prompts (no rows in its 'prompt' column)"
    )
    assert refused("cols.csv", "text,seed\na,1\n") == (
        "cols.csv: no 'prompt' column (columns found: 'text', 'seed')"
    )
    assert refused("gap.csv", "id,prompt\n1,a\n2,\n") == (
        "gap.csv:3: empty 'prompt' cell (each row needs a prompt)"
    )
    assert refused("latin1.txt", "caf\xe9\n".encode("latin-1")) == (
        "latin1.txt: not UTF-8 text (byte 3): save it as UTF-8"
    )
    assert refused("long.txt", "ok\n" + "x" * 2001 + "\n") == (
        "long.txt:2: prompt of 2001 characters; at most 2000"
    )
    assert refused("junk.parquet", b"not parquet at all").startswith(
        "junk.parquet: not a readable Parquet file: "
    )
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "cols.parquet")
    assert "no 'prompt' column (columns found: 'text')" in refused(
        "cols.parquet", (tmp_path / "cols.parquet").read_bytes()
    )
    pq.write_table(pa.table({"prompt": [1, 2]}), tmp_path / "ints.parquet")
    assert "column 'prompt': must hold text (got int64)" in refused(
        "ints.parquet", (tmp_path / "ints.parquet").read_bytes()
    )
    pq.write_table(pa.table({"prompt": ["a", None]}), tmp_path / "null.parquet")
    assert "null.parquet: row 2: empty 'prompt' value" in refused(
        "null.parquet", (tmp_path / "null.parquet").read_bytes()
    )


def test_the_command_says_what_to_fix_in_one_line(env, capsys, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n")
    assert _error(capsys, "submit", str(tmp_path / "none.csv")) == (
        f"no such file: {tmp_path / 'none.csv'}"
    )
    assert _error(capsys, "submit", str(tmp_path / "none.parquet")) == (
        f"no such file: {tmp_path / 'none.parquet'}"
    )
    assert "--seeds: expected a count" in _error(capsys, "submit", str(path), "--seeds", "x")
    assert "--set: expected KEY=VALUE" in _error(capsys, "submit", str(path), "--set", "oops")
    line = _error(capsys, "submit", str(path), "--model", "a", "--set", "model=b")
    assert line == "--model: given twice (--model and --set model=): give it once"
    # The prompts options belong to prompts files; a campaign file holds its own.
    campaign = tmp_path / "c.yaml"
    campaign.write_text("grid:\n  prompts: [a cat]\n")
    line = _error(capsys, "submit", str(campaign), "--seeds", "4")
    assert line.startswith("--seeds: applies to a prompts file (.txt, .csv, .parquet)")
    assert "c.yaml is a campaign file" in line
    # Everything checked before the API is asked: with no API, it is the next thing missing.
    assert "run `farm up`" in _error(capsys, "submit", str(path), "--seeds", "0-1")


def test_api_errors_name_the_option_they_came_from():
    def mapped(field: str) -> str:
        return str(prompts.option_of(InvalidJob(field, "why"), prompts.Path("p.txt")))

    assert mapped("defaults.height") == "--set height: why"
    assert mapped("defaults.model") == "--model: why"
    assert mapped("grid.seeds") == "--seeds: why"
    assert mapped("grid.prompts") == "p.txt: why"
    assert mapped("campaign") == "campaign: why"


@pytest.mark.slow
def test_submit_a_csv_through_the_command(stack, api_url, tokens, alice, env, capsys, tmp_path):
    env.setenv("FARM_API_URL", api_url)
    env.setenv("FARM_API_TOKEN", tokens["alice"])
    path = tmp_path / "shots.csv"
    path.write_text("prompt,owner\na red cat,me\nقطة حمراء,you\n", encoding="utf-8")
    fast = ["height=64", "width=64", "num_inference_steps=2", "prior_num_inference_steps=2"]
    options = [x for kv in fast for x in ("--set", kv)]
    code = cli.main(
        ["submit", str(path), "--seeds", "3-4", "--model", "kandinsky-2.2", *options, "--wait"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "only the 'prompt' column was read, not 'owner'" in err
    cid = re.search(r"campaign ([0-9a-f]{32}): 4 jobs", out).group(1)
    assert json.loads(out.strip().splitlines()[-1])["done"] == 4
    handle = alice.campaign(cid)
    assert handle.status().name == "shots.csv"
    jobs = list(handle.results())
    assert {(j.prompt, j.seed) for j in jobs} == {
        (p, s) for p in ("a red cat", "قطة حمراء") for s in (3, 4)
    }
    assert all(j.spec["model"] == "kandinsky-2.2" and j.spec["height"] == 64 for j in jobs)
    # The API's own checks, named as the options that carried the bad values.
    line = _error(capsys, "submit", str(path), "--set", "height=100")
    assert line.startswith("--set height: must be a multiple of 64"), line
    line = _error(capsys, "submit", str(path), "--set", "heigth=64")
    assert line.startswith("--set heigth: unknown field (allowed: "), line
    line = _error(capsys, "submit", str(path), "--model", "kandinsky-9")
    assert line.startswith("--model: unknown model 'kandinsky-9'"), line
    line = _error(capsys, "submit", str(path), "--seeds", "0")
    assert line.startswith("--seeds: a count must be between 1 and"), line
