"""The recipe A/B report: finished arms only, deltas against the control, verdicts against the seed noise."""
import json

from train.recipe_ab import EPOCHS, KINDS, collect, markdown, verdicts


def write_run(root, name, all_nmse, epochs=EPOCHS):
    val = {k: all_nmse for k in KINDS}
    history = [{"epoch": e + 1, "val_nmse": val} for e in range(epochs)]
    (root / name).mkdir()
    (root / name / "history.json").write_text(json.dumps(history))


def test_verdicts_against_seed_noise(tmp_path):
    write_run(tmp_path, "control", 8.0)
    write_run(tmp_path, "control-seed1", 8.1)  # seed noise 0.1
    write_run(tmp_path, "no-heads", 7.5)  # heads cost 0.5: beyond the noise
    write_run(tmp_path, "loss-l1", 8.05)  # inside the noise
    write_run(tmp_path, "no-photometric", 9.0)  # removing it hurts: the component helps
    write_run(tmp_path, "black-occluders", 8.0, epochs=EPOCHS - 1)  # unfinished: not reported
    result = collect(tmp_path)
    assert set(result) == {"control", "control-seed1", "no-heads", "loss-l1", "no-photometric"}
    rows = {line.split(" | ")[0].strip("| "): line for line in verdicts(result)}
    assert rows["no-heads"].endswith("component hurts |") and "-0.500" in rows["no-heads"]
    assert rows["loss-l1"].endswith("within seed noise |")
    assert rows["no-photometric"].endswith("component helps |")
    assert "±0.100" in rows["seed noise (control vs control-seed1)"]
    doc = {"budget": ["--epochs", str(EPOCHS)], "init": {"weights": "w.pt", "val": {"all": 9.0}}, "arms": result}
    md = markdown(doc)
    assert "| init | 9.000 |" in md and "component hurts" in md


def test_no_verdict_without_a_second_seed(tmp_path):
    write_run(tmp_path, "control", 8.0)
    write_run(tmp_path, "no-heads", 7.5)
    assert verdicts(collect(tmp_path))[-1].endswith("no second seed yet |")
