"""The recipe's training slices (slice.py, names.py) and run.py's shipping rule: what each run trains on,
and when a candidate replaces the built-in model."""

from __future__ import annotations

import datetime
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recipes.avsr_tiny_en import build as B
from recipes.avsr_tiny_en import slice as S
from recipes.avsr_tiny_en.run import better, missing_packages, package_list

pytest.importorskip("faker")  # the recipe's name lists (recipes/avsr_tiny_en/PIP_PACKAGES, the dev extra)

from recipes.avsr_tiny_en.names import held_out_names, name_pools, name_sentences  # noqa: E402


def rows(n_train: int = 3000) -> list[dict]:
    """A sentence table as text.py writes it: training sentences of two sources, some held-out ones."""
    out = []
    for i in range(n_train):
        source = "web-bible" if i % 5 == 0 else "wordnet-examples"
        out.append(
            {"id": f"s{i:05d}", "source": source, "split": "train", "words": "4", "text": f"word{i} a b c."}
        )
    out += [
        {"id": f"t{i:04d}", "source": "fortunes", "split": "test", "words": "5", "text": f"f{i} x y z w."}
        for i in range(600)
    ]
    return out


def test_name_sentences_name_people_and_places_but_never_the_held_out_ones():
    first, last, cities, countries = name_pools()
    assert min(len(first), len(last), len(cities)) > 300
    sentences = name_sentences(300, seed=1)
    assert len(sentences) == 300 and len(set(sentences)) > 250
    names = set(first) | set(last) | {w for c in cities + countries for w in c.split()}
    assert all(any(w.strip(".,?!") in names for w in s.split()) for s in sentences)
    banned = held_out_names()
    assert {"Glasgow", "Siobhan", "Tallinn"} <= banned
    assert not any(w.strip(".,?!") in banned for s in sentences for w in s.split())
    assert all(not re.search(r"\d", s) for s in sentences)  # numbers written as words
    assert name_sentences(50, seed=1) == sentences[:50] and name_sentences(50, seed=2) != sentences[:50]


def test_a_slice_takes_new_sentences_in_clips_of_one_to_three():
    table = rows()
    one, two = S.slice_sentences(table, 1, 1000), S.slice_sentences(table, 2, 1000)
    sources = Counter(source for _, source, _ in one)
    assert sources["names"] == 300 and sources["web-bible"] == 100
    trained = lambda picked: {i for i, source, _ in picked if source != "names"}  # noqa: E731
    assert not trained(one) & trained(two)  # the next slice: other sentences
    clips = S.group(one, 1)
    assert [s for clip in clips for s in clip] == one  # every sentence once, in order
    sizes = Counter(len(c) for c in clips)
    assert set(sizes) == {1, 2, 3} and sizes[1] > sizes[2] > sizes[3]
    assert all(sum(len(t.split()) for *_, t in c) <= S.MAX_WORDS or len(c) == 1 for c in clips)


def test_slice_noise_is_never_below_5_db_and_a_quarter_of_clips_at_5_to_10():
    rng = np.random.default_rng(0)
    profile = S.slice_profile(6)
    noisy = rng.random(4000) < profile["noise_p"]
    snrs = np.array([B.draw_snr(rng, profile["snr_db"]) for _ in range(4000)])
    assert snrs.min() >= 5.0 and 0.2 < (noisy & (snrs < 10)).mean() < 0.3
    # slices 1-5 rebuild with their own, quieter noise: 7.5 % of clips at 5-10 dB
    early = S.slice_profile(5)
    snrs = np.array([B.draw_snr(rng, early["snr_db"]) for _ in range(4000)])
    assert early["noise_p"] == 0.5 and 0.8 < (snrs >= 10).mean() < 0.9
    assert {k: v for k, v in early.items() if k not in ("noise_p", "snr_db")} == {
        k: v for k, v in profile.items() if k not in ("noise_p", "snr_db")
    }
    kinds = Counter(B.draw_kind(u, profile["noise_kinds"]) for u in rng.random(4000))
    assert "white" not in kinds and kinds["babble"] > kinds["pink"] > kinds["brown"]
    # the v2 corpus's single band draws one uniform, as it always did (its clips rebuild identically)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert B.draw_snr(a, B.V2_PROFILE["snr_db"]) == b.uniform(0.0, 30.0)


def test_two_sentence_set_uses_fortunes_no_other_test_split_uses(tmp_path):
    table = rows()
    jobs = S.two_sentence_jobs(table, tmp_path)
    assert len(jobs) == S.TWO_SENTENCE_CLIPS
    order = sorted((r for r in table if r["split"] == "test"), key=lambda r: B.stable(0, "test", r["id"]))
    used = {r["id"] for r in order[: S.TWO_SENTENCE_SKIP]}
    ids = [i for j in jobs for i in j["sentence_id"].split("+")]
    assert len(ids) == 2 * len(jobs) == len(set(ids)) and not used & set(ids)
    assert {j["voice"] for j in jobs} <= set(B.TEST_VOICES)


CLIPS = {"lrs3": 1, "audioeval-en": 3}


def table(**wers):
    rows = [{"set": k, "avsr": v, "clips": CLIPS.get(k, 100)} for k, v in wers.items()]
    return {"table": rows, "names": {"no prompt": (5, 34, 30.0)}}


def test_a_candidate_ships_only_when_better_and_nowhere_worse():
    shipped = table(
        **{
            "heldout-clean": 23.0,
            "heldout-babble5": 70.4,
            "heldout-2sent": 30.0,
            "lrs3": 3.8,
            "audioeval-en": 14,
        }
    )
    ok, why = better(
        table(
            **{"heldout-clean": 22.0, "heldout-babble5": 71.0, "heldout-2sent": 25.0, "lrs3": 20.0},
            **{"audioeval-en": 28.0},
        ),
        shipped,
    )
    assert ok, why  # the sets of 1 and 3 clips are reported, not ruled on
    ok, why = better(
        table(**{"heldout-clean": 20.0, "heldout-babble5": 72.0, "heldout-2sent": 25.0}), shipped
    )
    assert not ok and "heldout-babble5" in why
    ok, why = better(
        table(**{"heldout-clean": 23.5, "heldout-babble5": 70.0, "heldout-2sent": 30.5}), shipped
    )
    assert not ok and "no lower WER" in why
    fewer = table(**{"heldout-clean": 20.0, "heldout-babble5": 70.0, "heldout-2sent": 25.0})
    fewer["names"] = {"no prompt": (4, 34, 30.0)}
    assert not better(fewer, shipped)[0]


def test_about_30_percent_of_slice_clips_carry_a_glossary_with_their_own_names():
    clips = S.group(S.slice_sentences(rows(), 1, 1750), 1)[:1000]
    prompts = S.contexts(clips, 1)
    assert prompts == S.contexts(clips, 1)  # reproducible for a slice
    assert 0.22 < sum(p is not None for p in prompts) / len(prompts) < 0.38
    named = [(c, p) for c, p in zip(clips, prompts, strict=True) if p and any(s == "names" for _, s, _ in c)]
    plain = [p for c, p in zip(clips, prompts, strict=True) if p and all(s != "names" for _, s, _ in c)]
    assert len(named) > 100 and len(plain) > 30
    for clip, prompt in named:
        listed = prompt.split(", ")
        text = " ".join(t for _, _, t in clip)
        said = [name for name in listed if name in text]
        assert said and len(listed) > len(said)  # the clip's names among others
    assert all(len(p.split(", ")) <= S.CONTEXT_OTHERS[1] for p in plain)


def test_replay_clips_are_one_sentence_clips_made_as_the_v2_corpus(tmp_path):
    (tmp_path / ".babble-train").mkdir()
    (tmp_path / ".babble-train" / "b.wav").write_bytes(b"")
    table = rows()
    replay = S.replay_jobs(table, tmp_path, 3, 200)
    assert len(replay) == 200 and S.replay_jobs(table, tmp_path, 3, 0) == []
    train = {r["id"]: r for r in table if r["split"] == "train"}
    assert all(j["text"] == train[j["sentence_id"]]["text"] for j in replay)  # one training sentence each
    assert all(j["profile"] is B.V2_PROFILE and j["split"] == "slice-3" for j in replay)
    # the v2 voice mix: espeak-ng at 2.5 of the pool weight, against 0.3 in a slice
    espeak = lambda jobs: sum(j["voice"].startswith("espeak") for j in jobs) / len(jobs)  # noqa: E731
    assert espeak(replay) > 2 * espeak(S.slice_jobs(table, tmp_path, 3, 200))
    ids = {j["id"] for j in replay} | {j["id"] for j in S.slice_jobs(table, tmp_path, 3, 100)}
    assert len(ids) == 300  # no replay clip overwrites a slice clip
    assert {j["folder"] for j in replay} == {str(tmp_path / "slice-3" / "train")}


def test_the_shipped_evaluation_is_reused_only_for_the_same_adapter_and_sets(tmp_path, monkeypatch):
    """run.py re-scores the shipped model only when the committed evaluation is of another adapter or
    lacks a set (or its clip count) that the candidate was scored on."""
    from recipes.avsr_tiny_en import run as R

    monkeypatch.setattr(R, "SHIPPED_EVALUATION", tmp_path / "shipped-evaluation.json")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter.safetensors").write_bytes(b"weights")
    (ckpt / "config.json").write_text("{}")
    shipped = table(**{"heldout-clean": 23.3, "heldout-2sent": 42.3})
    candidate = table(**{"heldout-clean": 26.2, "heldout-2sent": 28.0})
    digest = R.adapter_digest(ckpt)
    assert R.committed_evaluation(candidate, digest) is None  # nothing committed yet
    R.commit_evaluation(shipped, digest)
    assert R.committed_evaluation(candidate, digest) == json.loads(json.dumps(shipped))
    (ckpt / "adapter.safetensors").write_bytes(b"other weights")
    assert R.committed_evaluation(candidate, R.adapter_digest(ckpt)) is None
    more = table(**{"heldout-clean": 26.2, "heldout-2sent": 28.0, "heldout-babble5": 72.2})
    assert R.committed_evaluation(more, digest) is None
    fewer_clips = {**candidate, "table": [{**r, "clips": 50} for r in candidate["table"]]}
    assert R.committed_evaluation(fewer_clips, digest) is None


def test_calibration_picks_the_highest_threshold_that_spares_nine_in_ten_exact_segments(tmp_path):
    """calibrate.py on evaluate's results: at most 10 % of the exact clips flagged on the half it picks on,
    the rates reported on the other half."""
    from recipes.avsr_tiny_en import calibrate as C

    report = tmp_path / "avsr-heldout-clean"
    report.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        ref = "the cat sat on the mat"
        wrong = i % 3 == 0
        hyp = "a dog ran by a log" if wrong else ref
        # guessing is less sure: wrong clips score lower, with overlap
        score = float(rng.normal(-1.4 if wrong else -0.4, 0.3))
        rows.append({"id": f"clip-{i}", "ref": ref, "hyp": hyp, "avg_logprob": score})
    (report / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    segments = C.segments(tmp_path)
    assert len(segments) == 200 and {s["wer"] for s in segments} == {0.0, 1.0}
    fit = [s for s in segments if C.half(s["id"]) == 0]
    threshold = C.pick(fit)
    assert C.rates(fit, threshold)["exact_flagged"] <= C.MAX_EXACT_FLAGGED
    assert C.rates(fit, threshold + 0.05)["exact_flagged"] > C.MAX_EXACT_FLAGGED  # the highest such
    assert C.rates(segments, threshold)["wrong_flagged"] > 0.8


def test_the_line_goes_on_from_its_committed_parameters(trained_ckpt, tmp_path, monkeypatch):
    """run.py --line: the first run starts from the base (stack 2, CTC stage); its parameters are written
    to the line folder, decoded as the shipped model decodes; the next run starts from them."""
    from avsr_cli.checkpoints.loading import load_checkpoint
    from recipes.avsr_tiny_en import run as R

    assert R.run_name(4, True, tmp_path / "line") == "line-slice4-base"  # nothing committed yet
    first = R.line_start(None, None)
    assert first[first.index("--base") + 1] == R.LINE_BASE
    assert first[first.index("--audio-rates") + 1] == "2" and "--ctc-epochs" in first
    model = tmp_path / "model"
    shutil.copytree(trained_ckpt, model)
    (model / "training.json").write_text(json.dumps({"steps": 10, "validations": []}))
    R.line_decoding(model)
    line = tmp_path / "line"
    R.commit_line(model, 4, ["avsr", "train"], line)
    R.commit_line(model, 5, ["avsr", "train"], line)
    assert [r["slice"] for r in json.loads((line / "training.json").read_text())["runs"]] == [4, 5]
    # a run from other parameters on the same slice has its own folder, never resuming this one's state
    name = R.run_name(4, True, line)
    (line / "adapter.safetensors").write_bytes(b"other parameters")
    assert name.startswith("line-slice4-") and R.run_name(4, True, line) not in (name, "line-slice4-base")
    command = ["avsr", "train", "--checkpoint", str(R.LINE), "-o", str(Path.home() / "runs")]
    R.commit_line(model, 6, command, line)
    recorded = json.loads((line / "training.json").read_text())["runs"][-1]["command"]
    assert recorded == "avsr train --checkpoint recipes/avsr_tiny_en/line -o ~/runs"  # no machine's paths
    config = json.loads((line / "config.json").read_text())
    shipped = json.loads((R.SHIPPED / "config.json").read_text())
    assert (
        config["decoding"]["num_beams"] == 1 and config["decoding"]["max_new_tokens"] == R.LINE_MAX_NEW_TOKENS
    )
    assert config["llm"]["cpu_matrices"] == shipped["llm"]["cpu_matrices"]
    loaded = load_checkpoint(line).config.decoding  # a checkpoint
    assert (loaded.max_new_tokens, loaded.no_repeat_ngram_size) == (
        R.LINE_MAX_NEW_TOKENS,
        R.LINE_NO_REPEAT_NGRAM,
    )
    assert R.line_start(line, None)[:2] == ["--checkpoint", str(line)]


def test_restacking_projects_pairs_of_like_frames_as_the_old_tokens(trained_ckpt, tmp_path):
    """restack.py (stack 4 -> 2): a stack-2 token [f1 f2] projects as the stack-4 token [f1 f2 f1 f2] did, and
    the restacked checkpoint loads with its LoRA unchanged."""
    import torch

    from avsr_cli.checkpoints.loading import load_checkpoint
    from recipes.avsr_tiny_en.restack import restack

    restack(trained_ckpt, tmp_path / "s2", 2)
    old = load_checkpoint(trained_ckpt, device="cpu", dtype="float32")
    new = load_checkpoint(tmp_path / "s2", device="cpu", dtype="float32")
    assert new.config.compression.audio_rates == [2]
    torch.manual_seed(0)
    width = old.config.audio_encoder.dim
    pairs = torch.randn(6, 2, width)
    doubled = pairs.repeat(1, 2, 1).reshape(-1, width)  # f1 f2 f1 f2, g1 g2 g1 g2, ...
    with torch.no_grad():
        (want,) = old.projectors["audio"]([doubled], 4)
        (got,) = new.projectors["audio"]([pairs.reshape(-1, width)], 2)
    assert want.shape[0] == 6 and got.shape[0] == 6 and want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    lora = {k: v for k, v in old.state_dict().items() if "lora" in k}
    assert lora and all(torch.equal(new.state_dict()[k], v) for k, v in lora.items())


def test_shipping_a_stack_2_candidate_rewrites_the_cards_rate_decoding_and_wer_rows(tmp_path):
    """card.py: the card takes the candidate's rate, decoding and measured WER, keeps its comments and
    prose, and drops the rows that the run did not measure again (the old adapter's numbers)."""
    from avsr_cli.checkpoints.zoo import parse_card, tomllib
    from recipes.avsr_tiny_en.card import CARD_ROWS, update_card

    models = Path(__file__).resolve().parents[1] / "models"
    card = tmp_path / "avsr-tiny-en.toml"
    card.write_text((models / "avsr-tiny-en.toml").read_text())
    before = tomllib.loads(card.read_text())
    config = json.loads((models / "avsr-tiny-en" / "config.json").read_text())
    config["compression"]["audio_rates"] = [2]
    config["decoding"]["max_new_tokens"] = 128
    config["decoding"]["no_repeat_ngram_size"] = 4
    committed = Path(__file__).resolve().parents[1] / "recipes/avsr_tiny_en/shipped-evaluation.json"
    measured = json.loads(committed.read_text())["evaluation"]["table"]
    measured = [{**r, "avsr": round(r["avsr"] - 5.5, 1)} for r in measured]
    measured.append({"set": "heldout-2sent-names", "clips": 9, "avsr": 1.0, "whisper": 1.0})  # no card row
    update_card(card, config, measured, "python -m recipes.avsr_tiny_en.run --line --slice 9")

    after = tomllib.loads(card.read_text())
    parse_card(card, after, {})
    assert after["compression"]["audio_rates"] == [2]
    assert after["decoding"]["max_new_tokens"] == 128 and after["decoding"]["no_repeat_ngram_size"] == 4
    assert after["notes"] == before["notes"] and after["parts"] == before["parts"]
    assert "# greedy: 4 beams" in card.read_text()  # comments kept
    by_set = {r["set"]: r for r in measured}
    wer = {row["dataset"]: row for row in after["wer"]}
    assert set(wer) == set(CARD_ROWS.values())  # the row tests/test_default_model.py measured is gone
    for name, dataset in CARD_ROWS.items():
        assert wer[dataset]["value"] == by_set[name]["avsr"] and wer[dataset]["audio_rate"] == 2
        assert wer[dataset]["source"].startswith("measured with `python -m recipes.avsr_tiny_en.run --line")
        assert datetime.date.today().isoformat() in wer[dataset]["source"]
    assert str(by_set["heldout-clean"]["whisper"]) in wer[CARD_ROWS["heldout-clean"]]["source"]


def test_the_built_in_cards_rate_and_decoding_are_its_checkpoints():
    """What the card of the built-in model says it decodes with is what its config.json decodes with."""
    from avsr_cli.checkpoints.zoo import tomllib

    models = Path(__file__).resolve().parents[1] / "models"
    card = tomllib.loads((models / "avsr-tiny-en.toml").read_text())
    config = json.loads((models / "avsr-tiny-en" / "config.json").read_text())
    assert card["compression"]["audio_rates"] == config["compression"]["audio_rates"]
    assert card["compression"]["mode"] == config["compression"]["mode"]
    for key in ("num_beams", "max_new_tokens", "no_repeat_ngram_size"):
        assert card["decoding"].get(key) == config["decoding"].get(key), key
    assert {row["audio_rate"] for row in card["wer"]} == set(config["compression"]["audio_rates"][:1])


def test_a_run_names_the_recipe_packages_it_misses():
    apt, pip = package_list("APT_PACKAGES"), package_list("PIP_PACKAGES")
    assert "wamerican" in apt and any(p.startswith("faker") for p in pip)
    missing = missing_packages(["sox", "avsr-no-such-package"], ["numpy", "avsr-no-such-dist>=1"])
    assert "avsr-no-such-dist" in missing and "numpy" not in missing
    if shutil.which("dpkg-query"):  # Debian packages are checked only where dpkg can tell
        assert "avsr-no-such-package" in missing


def test_a_finished_line_run_ships_only_if_better_than_the_model_still_shipped(tmp_path, monkeypatch):
    """run.py --ship-run NAME: the candidate replaces the shipped adapter, the card's rows and the committed
    evaluation, and records the line's runs; a run found worse, or compared with another shipped model, or
    whose parameters the line no longer holds, is refused with the reason."""
    from recipes.avsr_tiny_en import run as R

    shipped = tmp_path / "shipped"
    shutil.copytree(R.SHIPPED, shipped)
    card = tmp_path / "avsr-tiny-en.toml"
    shutil.copyfile(R.CARD, card)
    line = tmp_path / "line"
    shutil.copytree(R.LINE, line)
    for name, value in (("SHIPPED", shipped), ("CARD", card), ("LINE", line)):
        monkeypatch.setattr(R, name, value)
    monkeypatch.setattr(R, "SHIPPED_EVALUATION", tmp_path / "shipped-evaluation.json")
    run_dir = tmp_path / "runs" / "line-slice9-x"
    shutil.copytree(line, run_dir / "model")
    command = "avsr train --data slice-9 -o model"
    R.commit_line(run_dir / "model", 9, command.split(), line)
    candidate = table(**{"heldout-clean": 20.0, "heldout-2sent": 21.0})
    for row in candidate["table"]:
        row["whisper"] = 3.7
    log = {"slice": 9, "line": str(line), "candidate": candidate, "train_command": command}
    log |= {"measured_by": "python -m recipes.avsr_tiny_en.run --line --slice 9", "better": False}
    log |= {
        "why": "worse by more than 1 point on heldout-babble5",
        "shipped_adapter": R.adapter_digest(shipped),
    }
    (run_dir / "run.json").write_text(json.dumps(log))
    with pytest.raises(SystemExit, match="no finished run"):
        R.ship_run(tmp_path / "runs" / "line-slice9-y")
    with pytest.raises(SystemExit, match="babble5"):
        R.ship_run(run_dir)
    (run_dir / "run.json").write_text(json.dumps({**log, "better": True, "shipped_adapter": "another"}))
    with pytest.raises(SystemExit, match="shipped model changed"):
        R.ship_run(run_dir)
    (run_dir / "run.json").write_text(json.dumps({**log, "better": True, "train_command": "avsr train x"}))
    with pytest.raises(SystemExit, match="another run"):
        R.ship_run(run_dir)
    assert R.adapter_digest(shipped) == log["shipped_adapter"]  # nothing shipped yet
    (run_dir / "run.json").write_text(json.dumps({**log, "better": True}))
    R.ship_run(run_dir)
    assert (shipped / "adapter.safetensors").read_bytes() == (line / "adapter.safetensors").read_bytes()
    training = json.loads((shipped / "training.json").read_text())
    assert training["slice"] == 9 and training["line"][-1]["command"] == command
    assert R.committed_evaluation(candidate, R.adapter_digest(shipped)) is not None
    assert "20.0" in card.read_text() and json.loads((run_dir / "run.json").read_text())["shipped_to"]
