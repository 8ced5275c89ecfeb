"""Your own corpus (``python -m data_prep.prepare text``), end to end on a small fabricated text:
prepare (sentencepiece and bytes), train both models a few updates with fairseq-train, evaluate
with fairseq-eval-lm and convert to bits per byte (``bpb``), sample through fairseq-interactive
(``--bpe sentencepiece``) and the hub (text in, text out); the guarantees (idempotent, changed
inputs refused, nothing half-written) and the bad-input errors of data_prep and the hub."""

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CLI_ENV, USER_DIR, run_cli
from data_prep import prepare, text as own
from data_prep.metrics import eval_metrics
from data_prep.corpus import DataPrepError
from fairseq_mswa.models.linear_mswa import LinearMSWALanguageModel
from fairseq_mswa.models.transformer_xl_mswa import TransformerXLMSWALanguageModel
from studies.run_utils import parse_eval_lm

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The lazy fox"
SPM_VOCAB = 48  # this text supports at most 61 unigram pieces
MODELS = {  # model -> (hub class, --arch, --task, extra fairseq-train flags)
    "linear_mswa": (LinearMSWALanguageModel, "linear_mswa_tiny", "language_modeling",
                    ("--tokens-per-sample", "64", "--sample-break-mode", "none")),
    "transformer_xl_mswa": (TransformerXLMSWALanguageModel, "transformer_xl_mswa_tiny", "mswa_lm",
                            ("--tokens-per-sample", "32")),
}


def _text(lines: int, seed: int) -> str:
    """Sentences of a small grammar (UTF-8 words included), 1-4 per line."""
    rng = random.Random(seed)
    adj = "quick lazy brown naïve clever old young café-loving".split()
    noun = "fox dog cat bird teacher student river mountain".split()
    verb = "sees chases likes follows watches helps".split()

    def sentence():
        return (f"The {rng.choice(adj)} {rng.choice(noun)} {rng.choice(verb)} the "
                f"{rng.choice(adj)} {rng.choice(noun)}.")

    out = [" ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(lines)]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three text files; train has a tab, a carriage return and a run of spaces (whitespace
    that fairseq would split a piece at), test ends without a newline."""
    d = tmp_path_factory.mktemp("own_text")
    files = {}
    for split, n, seed in (("train", 600, 0), ("valid", 40, 1), ("test", 40, 2)):
        body = _text(n, seed)
        if split == "train":
            body += "The\tlazy fox  sees the old dog.\r\n"
        if split == "test":
            body = body.rstrip("\n")
        files[split] = d / f"{split}.txt"
        files[split].write_text(body, encoding="utf-8", newline="")
    return files


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("own_bin")
    spm_info = own.prepare_text(root, "own", corpus, spm_vocab=SPM_VOCAB, workers=1,
                                log=lambda m: None)
    byte_info = own.prepare_text(root, "own-bytes", corpus, byte_level=True, workers=1,
                                 log=lambda m: None)
    return root, spm_info, byte_info


def _train(data: Path, save: Path, model: str, updates: int = 20) -> Path:
    _, arch, task, extra = MODELS[model]
    run_cli("train", *[
        str(data), "--user-dir", str(USER_DIR), "--task", task, "--arch", arch, *extra, "--cpu",
        "--num-workers", "0", "--optimizer", "adam", "--lr", "1e-2", "--batch-size", "8",
        "--max-update", str(updates), "--save-dir", str(save), "--no-epoch-checkpoints",
        "--log-format", "simple", "--seed", "1", "--disable-validation",
    ], timeout=180)
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def checkpoints(prepared, tmp_path_factory):
    """Both models trained a few updates on the sentencepiece corpus."""
    root = prepared[0]
    save = tmp_path_factory.mktemp("own_ckpt")
    return {m: _train(root / "own", save / m, m) for m in MODELS}


def _leftovers(root: Path):
    return sorted(p.name for p in Path(root).rglob(".tmp-*"))


# --- prepare ------------------------------------------------------------------------------------

def test_prepared_json_counts(corpus, prepared):
    """Counts against an independent recount: sha256 and bytes of every input, sentencepiece
    pieces + one </s> per line = fairseq's symbols, words and lines; bytes: one symbol a byte."""
    import sentencepiece as spm

    root, info, binfo = prepared
    dest = root / "own"
    sp = spm.SentencePieceProcessor(model_file=str(dest / own.SPM_MODEL))
    assert sp.get_piece_size() == SPM_VOCAB == info["vocabulary"]["spm_pieces"]
    assert info["tokenizer"]["settings"] == own.SPM_SETTINGS
    assert info["tokenizer"]["model_sha256"] == hashlib.sha256(
        (dest / own.SPM_MODEL).read_bytes()).hexdigest()
    for split, path in corpus.items():
        raw = path.read_bytes()
        lines = raw.decode("utf-8").removesuffix("\n").split("\n")
        for i, rec in enumerate((info, binfo)):
            assert rec["inputs"][split]["sha256"] == hashlib.sha256(raw).hexdigest()
            s = rec["splits"][split]
            assert s["bytes"] == len(raw) and s["lines"] == len(lines)
            assert s["words"] == len(raw.decode("utf-8").split())
            assert s["word_tokens"] == s["words"] + s["lines"]
            assert s["unk"] == 0  # every held-out character / byte occurs in train
        pieces = sum(len(p) for p in sp.encode(lines, out_type=str))
        assert info["splits"][split]["symbols"] == pieces + len(lines)
        assert binfo["splits"][split]["symbols"] == len(raw) + (0 if raw.endswith(b"\n") else 1)
    assert info["splits"]["test"]["ends_with_newline"] is False
    # whitespace other than space / newline is a space inside the model; spaces are kept
    assert sp.decode(sp.encode("The\tlazy  fox\r")) == "The lazy  fox "
    assert sp.decode(sp.encode("  naïve café-loving cat")) == "  naïve café-loving cat"
    assert (root / "own-bytes" / "prepared.json").is_file()
    assert not (root / "own-bytes" / own.SPM_MODEL).exists()
    assert _leftovers(root) == [] and not (dest / ".encoded").exists()


def test_sentencepiece_training_is_deterministic(corpus, prepared, tmp_path):
    root = prepared[0]
    again = own.train_sentencepiece(corpus["train"], SPM_VOCAB, "unigram", "train", tmp_path)
    assert again == (root / "own" / own.SPM_MODEL).read_bytes()


def test_second_run_does_nothing_changed_input_refused(corpus, prepared, tmp_path, monkeypatch):
    root, info, _ = prepared
    dest = root / "own"
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}

    def boom(*a, **k):
        raise AssertionError("a finished corpus must not be touched again")

    monkeypatch.setattr(own, "run_preprocess", boom)
    monkeypatch.setattr(own, "train_sentencepiece", boom)
    msgs = []
    assert own.prepare_text(root, "own", corpus, spm_vocab=SPM_VOCAB, log=msgs.append) == info
    assert any("nothing to do" in m for m in msgs)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    changed = dict(corpus, valid=tmp_path / "valid.txt")
    changed["valid"].write_text(corpus["valid"].read_text(encoding="utf-8") + "One more line.\n",
                                encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"--valid .* changed since .* remove .* --name"):
        own.prepare_text(root, "own", changed, spm_vocab=SPM_VOCAB, log=lambda m: None)
    with pytest.raises(DataPrepError, match="prepared with --spm-vocab 48 .*not --bytes"):
        own.prepare_text(root, "own", corpus, byte_level=True, log=lambda m: None)
    with pytest.raises(DataPrepError, match="not --spm-vocab 40"):
        own.prepare_text(root, "own", corpus, spm_vocab=40, log=lambda m: None)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


@pytest.mark.parametrize("vocab, model_type, match", [
    (5000, "unigram", r"--spm-vocab 5000 is larger than --train .* \(at most 61 pieces\): pass "
                      r"--spm-vocab 61 or less"),
    (5000, "bpe", r"larger than .* for a bpe model .*: pass --spm-vocab \d+ or less"),
    (10, "unigram", r"--spm-vocab 10 is smaller than the \d+ pieces .*: pass --spm-vocab \d+ or more"),
])
def test_vocabulary_the_text_cannot_fill(corpus, tmp_path, vocab, model_type, match):
    with pytest.raises(DataPrepError, match=match):
        own.prepare_text(tmp_path, "own", corpus, spm_vocab=vocab, spm_model_type=model_type,
                         log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


BAD_INPUTS = {  # kind -> (file content, expected error)
    "missing": (None, r"--valid \S+: no such file"),
    "empty": (b"", r"--valid \S+ is empty: pass a file with text"),
    "whitespace": (b" \n\n\t\n", r"has no text \(only whitespace\)"),
    "binary": (b"PK\x03\x04\x00\x00" + bytes(range(256)), r"looks binary \(a NUL byte at offset 4\)"),
    "latin1": ("The café sees the dog.\n".encode("latin-1"),
               r"is not UTF-8 \(byte offset 7: .*iconv -f latin1 -t utf-8"),
}


@pytest.mark.parametrize("mode", ["spm", "bytes"])
@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_one_line_error_nothing_written(corpus, tmp_path, kind, mode):
    """Through the command line: exit 1, one line on stderr naming the fix, no output folder."""
    content, match = BAD_INPUTS[kind]
    bad = tmp_path / "bad.txt"
    if content is not None:
        bad.write_bytes(content)
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "data_prep.prepare", "text", "--name", "own", "--root", str(root),
           "--train", str(corpus["train"]), "--valid", str(bad), "--test", str(corpus["test"]),
           "--workers", "1", *(["--bytes"] if mode == "bytes" else ["--spm-vocab", "40"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=CLI_ENV)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stdout + proc.stderr
    assert err[0].startswith("[data_prep] error: ")
    assert re.search(match, err[0]), err[0]
    assert not root.exists() or list(root.iterdir()) == []


# --- train, evaluate, sample --------------------------------------------------------------------

@pytest.mark.parametrize("model", list(MODELS))
def test_end_to_end_eval_bpb_and_text_sampling(prepared, checkpoints, model, tmp_path):
    """fairseq-eval-lm on the test split -> bits per byte / per-word perplexity (``bpb``, from the
    counts of prepared.json); fairseq-interactive --bpe sentencepiece and the hub return text."""
    root, info, _ = prepared
    data, ckpt = root / "own", checkpoints[model]
    cls, _, task, extra = MODELS[model]
    out = run_cli("eval_lm", *[
        str(data), "--user-dir", str(USER_DIR), "--task", task, "--path", str(ckpt), *extra,
        "--batch-size", "4", "--cpu", "--gen-subset", "test", "--num-workers", "0",
    ], timeout=120)
    (tmp_path / "eval.log").write_text(out)
    assert prepare.main(["bpb", str(data), "--eval-log", str(tmp_path / "eval.log"),
                         "--json", str(tmp_path / "bpb.json")]) == 0
    m = json.loads((tmp_path / "bpb.json").read_text())
    ev = parse_eval_lm(out)
    test = info["splits"]["test"]
    assert ev["eval_symbols"] == test["symbols"]  # every symbol of the split scored
    bits = ev["loss_base2"] * test["symbols"]
    assert m["bits_per_byte"] == pytest.approx(bits / test["bytes"], rel=1e-12)
    assert m["word_perplexity"] == pytest.approx(2 ** (bits / test["word_tokens"]), rel=1e-12)
    # a few updates learn the text: far below the 8 bits of a uniform byte
    assert 0 < m["bits_per_byte"] < 3

    n_prompt = len(own_pieces(data, PROMPT))
    out = run_cli("interactive", *[
        str(data), "--user-dir", str(USER_DIR), "--task", task, "--path", str(ckpt),
        "--bpe", "sentencepiece", "--sentencepiece-model", str(data / own.SPM_MODEL),
        "--sampling", "--sampling-topk", "5", "--beam", "1", "--cpu", "--seed", "1",
        "--min-len", str(n_prompt + 5), "--max-len-b", "60",
    ], input=PROMPT + "\n", timeout=120)
    hypo = [line.split("\t") for line in out.splitlines() if line.startswith(("H-0", "D-0"))]
    pieces, detok = hypo[0][2], hypo[1][2]
    assert "\u2581" in pieces, out[-2000:]  # H: sentencepiece pieces
    assert detok.startswith(PROMPT) and "\u2581" not in detok, out[-2000:]  # D: text
    assert len(detok) > len(PROMPT) + 3

    hub = cls.from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name,
                              data_name_or_path=str(data), user_dir=str(USER_DIR))
    torch.manual_seed(0)
    sample = hub.sample(PROMPT, sampling=True, sampling_topk=5, beam=1,
                        min_len=n_prompt + 5, max_len_b=60)
    assert sample.startswith(PROMPT) and len(sample) > len(PROMPT) + 3
    assert "\u2581" not in sample, sample  # detokenised (a model this small still samples
    # fairseq's madeupword padding symbols and <unk> now and then)


def own_pieces(data: Path, text: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(data / own.SPM_MODEL)).encode(text, out_type=str)


def test_byte_corpus_hub_returns_text(prepared, tmp_path):
    """A --bytes corpus: the hub encodes text to byte symbols and samples text back."""
    root = prepared[0]
    data = root / "own-bytes"
    ckpt = _train(data, tmp_path / "xl", "transformer_xl_mswa", updates=8)
    hub = TransformerXLMSWALanguageModel.from_pretrained(
        str(ckpt.parent), checkpoint_file=ckpt.name, data_name_or_path=str(data),
        user_dir=str(USER_DIR))
    line = "The naïve fox\nsees the café-loving dog."
    tokens = hub.encode(line)
    d = hub.src_dict
    assert [d[t] for t in tokens[:3].tolist()] == ["84", "104", "101"]  # "T", "h", "e"
    newline = line.encode("utf-8").index(b"\n")
    assert tokens[newline].item() == d.eos() and tokens[-1].item() == d.eos()  # newline, end
    assert hub.decode(tokens) == line
    torch.manual_seed(0)
    sample = hub.sample(PROMPT, sampling=True, sampling_topk=5, beam=1,
                        min_len=len(PROMPT) + 10, max_len_b=40)
    assert sample.startswith(PROMPT) and len(sample) >= len(PROMPT) + 9, sample
    assert not sample[len(PROMPT):].replace(" ", "").isdigit()  # text, not byte numbers


def test_bpb_refuses_another_split_and_names_it(prepared, eval_lm_output):
    root, info, _ = prepared
    valid = info["splits"]["valid"]["symbols"]
    ev = parse_eval_lm(eval_lm_output(valid, 2.0, 4.0))
    with pytest.raises(DataPrepError, match=r"scored .* but the test split has .*: pass --split valid"):
        eval_metrics(info, "test", ev)
    m = eval_metrics(info, "valid", ev)
    assert m["bits_per_byte"] == pytest.approx(2.0 * valid / info["splits"]["valid"]["bytes"])


# --- the hub's bad inputs -----------------------------------------------------------------------

@pytest.mark.parametrize("model", list(MODELS))
def test_hub_dictionary_mismatch_is_one_line(prepared, checkpoints, model):
    """A data-bin whose dictionary does not fit the checkpoint (here the byte corpus for a
    sentencepiece model): a one-line ValueError naming the fix, not torch's size-mismatch list."""
    root = prepared[0]
    ckpt = checkpoints[model]
    cls = MODELS[model][0]
    with pytest.raises(ValueError) as e:
        cls.from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name,
                            data_name_or_path=str(root / "own-bytes"), user_dir=str(USER_DIR))
    msg = str(e.value)
    from fairseq.data import Dictionary

    assert "\n" not in msg
    want = prepared[1]["vocabulary"]["dictionary_size"]
    have = len(Dictionary.load(str(root / "own-bytes" / "dict.txt")))
    assert want != have and f"has {want} rows" in msg and f"gives {have}" in msg
    assert msg.endswith("the model was trained with")  # the fix: the data directory it was trained on


@pytest.mark.parametrize("model, other", [("linear_mswa", "transformer_xl_mswa"),
                                          ("transformer_xl_mswa", "linear_mswa")])
def test_hub_other_models_checkpoint_names_the_class(prepared, checkpoints, model, other):
    root = prepared[0]
    ckpt = checkpoints[other]
    with pytest.raises(ValueError) as e:
        MODELS[model][0].from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name,
                                         data_name_or_path=str(root / "own"),
                                         user_dir=str(USER_DIR))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.endswith(f"load it with {MODELS[other][0].__name__}.from_pretrained")
