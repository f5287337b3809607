"""The four code examples of transformers' ImageGPT documentation page, run twice: as written (transformers) and
with only ``transformers`` replaced by ``imagegpt`` in their imports. They must run and give the same numbers.

Two things stand in for what this machine cannot reach: the Hub model ``openai/imagegpt-small`` is a small random
model saved to a temporary directory (one checkpoint with the LM head and a classifier head, so all three classes
load it), and the COCO image the examples download is a local random image. matplotlib is replaced by a recorder
when it is not installed.
"""

from __future__ import annotations

import json
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, randomize_

# Verbatim from transformers 5.23.0 (configuration_imagegpt.py and modeling_imagegpt.py docstrings).
CONFIG_EXAMPLE = """
>>> from transformers import ImageGPTConfig, ImageGPTModel

>>> # Initializing a ImageGPT configuration
>>> configuration = ImageGPTConfig()

>>> # Initializing a model (with random weights) from the configuration
>>> model = ImageGPTModel(configuration)

>>> # Accessing the model configuration
>>> configuration = model.config
"""

FEATURES_EXAMPLE = """
>>> from transformers import AutoImageProcessor, ImageGPTModel
>>> from PIL import Image
>>> from huggingface_hub.utils import httpx
>>> from io import BytesIO

>>> url = "http://images.cocodataset.org/val2017/000000039769.jpg"
>>> with httpx.stream("GET", url) as response:
...     image = Image.open(BytesIO(response.read()))

>>> image_processor = AutoImageProcessor.from_pretrained("openai/imagegpt-small")
>>> model = ImageGPTModel.from_pretrained("openai/imagegpt-small")

>>> inputs = image_processor(images=image, return_tensors="pt")
>>> outputs = model(**inputs)
>>> last_hidden_states = outputs.last_hidden_state
"""

GENERATION_EXAMPLE = """
>>> from transformers import AutoImageProcessor, ImageGPTForCausalImageModeling
>>> import torch
>>> import matplotlib.pyplot as plt
>>> import numpy as np

>>> image_processor = AutoImageProcessor.from_pretrained("openai/imagegpt-small")
>>> model = ImageGPTForCausalImageModeling.from_pretrained("openai/imagegpt-small")
>>> device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
>>> model.to(device)  # doctest: +IGNORE_RESULT

>>> # unconditional generation of 8 images
>>> batch_size = 4
>>> context = torch.full((batch_size, 1), model.config.vocab_size - 1)  # initialize with SOS token
>>> context = context.to(device)
>>> output = model.generate(
...     input_ids=context, max_length=model.config.n_positions + 1, temperature=1.0, do_sample=True, top_k=40
... )

>>> clusters = image_processor.clusters
>>> height = image_processor.size["height"]
>>> width = image_processor.size["width"]

>>> samples = output[:, 1:].detach().cpu().numpy()
>>> samples_img = [
...     np.reshape(np.rint(127.5 * (clusters[s] + 1.0)), [height, width, 3]).astype(np.uint8) for s in samples
... ]  # convert color cluster tokens back to pixels
>>> f, axes = plt.subplots(1, batch_size, dpi=300)

>>> for img, ax in zip(samples_img, axes):  # doctest: +IGNORE_RESULT
...     ax.axis("off")
...     ax.imshow(img)
"""

CLASSIFICATION_EXAMPLE = """
>>> from transformers import AutoImageProcessor, ImageGPTForImageClassification
>>> from PIL import Image
>>> from huggingface_hub.utils import httpx
>>> from io import BytesIO

>>> url = "http://images.cocodataset.org/val2017/000000039769.jpg"
>>> with httpx.stream("GET", url) as response:
...     image = Image.open(BytesIO(response.read()))

>>> image_processor = AutoImageProcessor.from_pretrained("openai/imagegpt-small")
>>> model = ImageGPTForImageClassification.from_pretrained("openai/imagegpt-small")

>>> inputs = image_processor(images=image, return_tensors="pt")
>>> outputs = model(**inputs)
>>> logits = outputs.logits
"""

DOWNLOAD = """with httpx.stream("GET", url) as response:
    image = Image.open(BytesIO(response.read()))"""


def to_code(example: str, library: str, hub_dir, image_path) -> str:
    """Doctest text -> code; the import switch for ``library``, and the two stand-ins (Hub id, download)."""
    lines = [line[4:] for line in textwrap.dedent(example).splitlines() if line.startswith((">>> ", "... "))]
    code = "\n".join(lines)
    if library == "imagegpt":
        code = code.replace("from transformers import", "from imagegpt import")
    assert DOWNLOAD in code or "httpx" not in code
    code = code.replace(DOWNLOAD, f"image = Image.open({str(image_path)!r})")
    return code.replace('"openai/imagegpt-small"', repr(str(hub_dir)))


class _Recorder(types.ModuleType):
    """matplotlib.pyplot's two calls the example makes, recording the images shown."""

    def __init__(self):
        super().__init__("matplotlib.pyplot")
        self.shown = []

    def subplots(self, rows, cols, dpi=None):
        recorder = self

        class Axis:
            def axis(self, *args):
                pass

            def imshow(self, img):
                recorder.shown.append(np.asarray(img))

        return object(), [Axis() for _ in range(cols)]


@pytest.fixture(scope="module")
def hub(transformers, tmp_path_factory):
    """A random stand-in for openai/imagegpt-small: 16 colors, 8x8 images, transformers' files."""
    root = tmp_path_factory.mktemp("hub")
    hf = randomize_(transformers.ImageGPTForCausalImageModeling(transformers.ImageGPTConfig(**TINY)).eval())
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    state["score.weight"] = torch.randn(2, TINY["n_embd"], generator=torch.Generator().manual_seed(1)) * 0.2
    hf.save_pretrained(root)
    from safetensors.torch import save_file

    save_file(state, str(root / "model.safetensors"), {"format": "pt"})  # add the classifier head
    clusters = np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32)
    transformers.ImageGPTImageProcessorPil(clusters=clusters, size={"height": 8, "width": 8}).save_pretrained(root)
    image = root / "cats.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image)
    return root, image


def run(example, library, hub, monkeypatch) -> dict:
    hub_dir, image = hub
    try:
        import matplotlib.pyplot  # noqa: F401  (the real one, when installed)
    except ImportError:
        monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
        monkeypatch.setitem(sys.modules, "matplotlib.pyplot", _Recorder())
    namespace: dict = {}
    torch.manual_seed(1234)
    exec(compile(to_code(example, library, hub_dir, image), f"<{library} example>", "exec"), namespace)
    return namespace


def test_config_example(hub, monkeypatch):
    theirs = run(CONFIG_EXAMPLE, "transformers", hub, monkeypatch)
    ours = run(CONFIG_EXAMPLE, "imagegpt", hub, monkeypatch)
    assert type(ours["model"]).__module__.startswith("imagegpt")
    a, b = (json.loads(ns["configuration"].to_json_string()) for ns in (theirs, ours))
    assert {k: b[k] for k in a if k in b} == {k: a[k] for k in a if k in b}
    sizes = [sum(p.numel() for p in ns["model"].parameters()) for ns in (theirs, ours)]
    assert sizes[0] == sizes[1]


def test_feature_extraction_example(hub, monkeypatch):
    theirs = run(FEATURES_EXAMPLE, "transformers", hub, monkeypatch)
    ours = run(FEATURES_EXAMPLE, "imagegpt", hub, monkeypatch)
    assert torch.equal(ours["inputs"]["input_ids"], theirs["inputs"]["input_ids"])
    torch.testing.assert_close(ours["last_hidden_states"], theirs["last_hidden_states"], atol=1e-5, rtol=1e-5)


def test_unconditional_generation_example(hub, monkeypatch):
    theirs = run(GENERATION_EXAMPLE, "transformers", hub, monkeypatch)
    ours = run(GENERATION_EXAMPLE, "imagegpt", hub, monkeypatch)
    assert ours["output"].shape == (4, 65)
    assert torch.equal(ours["output"], theirs["output"])  # same seed, same draws
    for a, b in zip(theirs["samples_img"], ours["samples_img"]):
        assert a.shape == (8, 8, 3) and np.array_equal(a, b)


def test_classification_example(hub, monkeypatch):
    theirs = run(CLASSIFICATION_EXAMPLE, "transformers", hub, monkeypatch)
    ours = run(CLASSIFICATION_EXAMPLE, "imagegpt", hub, monkeypatch)
    assert ours["logits"].shape == (1, 2)
    torch.testing.assert_close(ours["logits"], theirs["logits"], atol=1e-5, rtol=1e-5)
