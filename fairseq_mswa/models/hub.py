"""The hub interface of the plugin's language models: one ``from_pretrained`` for both.

``<Model>.from_pretrained(checkpoint_dir, checkpoint_file=..., data_name_or_path=DATA)`` returns
fairseq's ``GeneratorHubInterface`` (``.sample(...)``, ``.score(...)``, ``.generate(...)``), and:

* finds the corpus's tokenizer in ``DATA/prepared.json`` (written by ``data_prep``): a
  sentencepiece corpus gets fairseq's ``--bpe sentencepiece`` with ``DATA/spm.model`` (unless
  ``bpe=...`` is passed), a byte-level one (enwik8, ``data_prep ... --bytes``) an interface that
  encodes UTF-8 text to byte symbols and decodes them back (a newline is ``</s>``); so ``sample``
  takes and returns text;
* refuses a data-bin whose dictionary does not fit the checkpoint, and a checkpoint of the other
  model, with a one-line error naming the fix.
"""

import json
import os
from typing import Dict, Optional

import torch
from fairseq import hub_utils

PREPARED = "prepared.json"


def _local_data_dir(model_name_or_path: str, data_name_or_path: str) -> Optional[str]:
    """The data folder fairseq's ``hub_utils.from_pretrained`` will read, when it is local."""
    data = (os.path.join(model_name_or_path, data_name_or_path)
            if data_name_or_path.startswith(".") else data_name_or_path)
    return data if os.path.isdir(data) else None


def prepared_info(data_dir: Optional[str]) -> Optional[Dict]:
    """``prepared.json`` of a data-bin made by data_prep (None if there is none)."""
    if data_dir is None:
        return None
    path = os.path.join(data_dir, PREPARED)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tokenizer_overrides(info: Optional[Dict], data_dir: Optional[str], kwargs: Dict) -> Dict:
    """``kwargs`` plus fairseq's BPE settings of a sentencepiece corpus (the caller's ``bpe``
    wins)."""
    tok = (info or {}).get("tokenizer") or {}
    if tok.get("type") != "sentencepiece" or "bpe" in kwargs:
        return kwargs
    model = os.path.join(data_dir, tok["model"])
    if not os.path.isfile(model):
        raise ValueError(f"{data_dir}/{PREPARED} names the sentencepiece model {tok['model']}, "
                         f"which is missing: prepare the corpus again (python -m data_prep.prepare "
                         f"text ...) or pass bpe=None")
    return {**kwargs, "bpe": "sentencepiece", "sentencepiece_model": model}


class ByteHubInterface(hub_utils.GeneratorHubInterface):
    """The hub of a byte-level corpus (symbols are the decimal byte values, ``</s>`` the newline):
    ``encode`` takes text, ``decode`` returns text (invalid UTF-8 from sampling is replaced by
    U+FFFD, an ``<unk>`` symbol too)."""

    def encode(self, sentence: str) -> torch.LongTensor:
        d = self.src_dict
        ids = [d.eos() if b == 10 else d.index(str(b)) for b in sentence.encode("utf-8")]
        return torch.LongTensor(ids + [d.eos()])

    def decode(self, tokens: torch.LongTensor) -> str:
        d = self.tgt_dict
        ids = tokens.tolist()
        if ids and ids[-1] == d.eos():  # the end of the hypothesis, not a newline of its text
            ids = ids[:-1]
        out = bytearray()
        for i in ids:
            if i == d.eos():
                out.append(10)
            elif i == d.unk():
                out += "\ufffd".encode("utf-8")
            elif i not in (d.pad(), d.bos()):
                sym = d[i]
                if sym.isdigit() and int(sym) < 256:
                    out.append(int(sym))
        return out.decode("utf-8", errors="replace")


def _checkpoint_vocab(path: str) -> Optional[int]:
    """Rows of the checkpoint's token embedding (plain or fairseq's AdaptiveInput)."""
    from fairseq import checkpoint_utils

    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]
    except Exception:  # the loader's own error was the first one; this is only for the message
        return None
    if "decoder.embed_tokens.weight" in state:
        return int(state["decoder.embed_tokens.weight"].shape[0])
    bands = [v for k, v in state.items()
             if k.startswith("decoder.embed_tokens.embeddings.") and k.endswith(".0.weight")]
    return sum(int(b.shape[0]) for b in bands) or None


def _dictionary_mismatch(checkpoint: str, data_dir: Optional[str]) -> str:
    from fairseq.data import Dictionary

    have = want = None
    if data_dir is not None and os.path.isfile(os.path.join(data_dir, "dict.txt")):
        have = len(Dictionary.load(os.path.join(data_dir, "dict.txt")))
    want = _checkpoint_vocab(checkpoint)
    sizes = (f" (the checkpoint's vocabulary has {want:,} symbols, {data_dir}/dict.txt "
             f"{have:,})" if have is not None and want is not None else "")
    return (f"{checkpoint} was not trained on the dictionary of {data_dir or 'the data'}{sizes}: "
            "pass data_name_or_path= the data-bin the model was trained on")


class HubMixin:
    """``from_pretrained`` of the plugin's language models (listed before
    ``FairseqLanguageModel`` in the class bases)."""

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", **kwargs):
        """fairseq's hub interface (``.sample("prompt", sampling=True, sampling_topk=10)``), with
        the corpus's tokenizer from ``prepared.json``; ``kwargs`` override the checkpoint's
        settings (``decode_full_attention=True``, ``bpe=...``)."""
        from .. import register

        register()  # the plugin's tasks too (a script may import this module before fairseq)
        data_dir = _local_data_dir(model_name_or_path, data_name_or_path)
        info = prepared_info(data_dir)
        kwargs = tokenizer_overrides(info, data_dir, kwargs)
        try:
            x = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                          archive_map=cls.hub_models(), **kwargs)
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            first = os.path.join(model_name_or_path, checkpoint_file.split(os.pathsep)[0])
            raise ValueError(_dictionary_mismatch(first, data_dir)) from None
        for model in x["models"]:
            if not isinstance(model, cls):
                raise ValueError(
                    f"{checkpoint_file} holds a {type(model).__name__} model, not a "
                    f"{cls.__name__}: load it with {type(model).__name__}.from_pretrained"
                )
        byte_level = (info or {}).get("unit") == "byte" and "bpe" not in kwargs
        interface = ByteHubInterface if byte_level else hub_utils.GeneratorHubInterface
        return interface(x["args"], x["task"], x["models"])
