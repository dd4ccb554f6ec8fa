import json
import subprocess
import sys
from pathlib import Path

from edgetune.config import load_recipe
from edgetune.data.rows import load_examples
from edgetune.data.split import make_splits

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "edgetune" / "datasets" / "device_logs.jsonl"
KEYS = ["device", "component", "severity", "code", "action"]


def test_demo_dataset_is_large_valid_and_in_schema():
    examples = load_examples(DATA).examples
    assert len(examples) >= 600
    severities, actions, devices = set(), set(), set()
    for ex in examples:
        answer = json.loads(ex.reference())
        assert list(answer) == KEYS
        severities.add(answer["severity"])
        actions.add(answer["action"])
        devices.add(answer["device"])
    assert severities == {"info", "warning", "error", "critical"}
    assert len(actions) >= 8 and len(devices) >= 8
    inputs = [ex.messages[1][1] for ex in examples]
    assert len(set(inputs)) == len(inputs)


def test_demo_split_has_no_leak_and_enough_test_examples():
    splits = make_splits(load_recipe("demo").data)
    assert splits.counts()["test"] >= 60 and splits.counts()["valid"] >= 60
    assert splits.overlap["exact"] == 0 and splits.overlap["same_input"] == 0


def test_generator_reproduces_the_committed_file(tmp_path):
    out = tmp_path / "regen.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == DATA.read_bytes()
