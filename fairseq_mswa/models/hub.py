"""The hub interface of the plugin's language models: one ``from_pretrained`` for both.

``<Model>.from_pretrained(checkpoint_dir, checkpoint_file=..., data_name_or_path=DATA)`` returns
fairseq's ``GeneratorHubInterface`` (``.sample(...)``, ``.score(...)``, ``.generate(...)``) and
refuses a checkpoint of the other model with a one-line error naming the class to use.
"""

from fairseq import hub_utils


class HubMixin:
    """``from_pretrained`` of the plugin's language models (listed before
    ``FairseqLanguageModel`` in the class bases)."""

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", **kwargs):
        """fairseq's hub interface (``.sample("prompt", sampling=True, sampling_topk=10)``);
        ``kwargs`` override the checkpoint's settings (``decode_full_attention=True``)."""
        x = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                      archive_map=cls.hub_models(), **kwargs)
        for model in x["models"]:
            if not isinstance(model, cls):
                raise ValueError(
                    f"{checkpoint_file} holds a {type(model).__name__} model, not a "
                    f"{cls.__name__}: load it with {type(model).__name__}.from_pretrained"
                )
        return hub_utils.GeneratorHubInterface(x["args"], x["task"], x["models"])
