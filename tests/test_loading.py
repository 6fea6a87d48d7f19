"""`loading`: device and dtype defaults, the backbone a model directory names, and a model that
cannot be loaded said in one line."""

import pytest
import torch

from diffinv.backbones import InstructPix2PixBackbone, StableDiffusionBackbone, StableDiffusionXLBackbone
from diffinv.errors import DiffinvError
from diffinv.loading import backbone_class, load_or_explain, resolve_device_dtype


def test_resolve_device_dtype():
    assert resolve_device_dtype("cpu", None) == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(DiffinvError, match="dtype"):
        resolve_device_dtype("cpu", "float8")
    if not torch.cuda.is_available():
        with pytest.raises(DiffinvError, match="CUDA"):
            resolve_device_dtype("cuda", None)


@pytest.mark.parametrize(
    "class_name, expected",
    [
        ("StableDiffusionPipeline", StableDiffusionBackbone),
        ("StableDiffusionXLPipeline", StableDiffusionXLBackbone),
        ("StableDiffusionInstructPix2PixPipeline", InstructPix2PixBackbone),
    ],
)
def test_the_backbone_is_the_one_model_index_names(tmp_path, class_name, expected):
    (tmp_path / "model_index.json").write_text(f'{{"_class_name": "{class_name}"}}')
    assert backbone_class(str(tmp_path), local_files_only=True) is expected


def test_a_model_that_cannot_be_loaded_is_one_line_that_says_what_to_do(tmp_path):
    def missing():
        raise OSError("no file named model_index.json\nand more detail")

    with pytest.raises(DiffinvError, match="could not load the model directory .*: no file named model_index.json$"):
        load_or_explain(str(tmp_path), False, missing)
    with pytest.raises(DiffinvError, match="no such model directory"):
        load_or_explain(str(tmp_path / "absent"), False, missing)
    with pytest.raises(DiffinvError, match="offline mode is on"):
        load_or_explain("owner/model", True, missing)
    assert load_or_explain("owner/model", True, lambda: 42) == 42
