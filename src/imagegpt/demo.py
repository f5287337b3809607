"""A local web demo (Gradio): watch a model complete images row by row, draw samples, and see which pixels it finds
surprising. ``imagegpt demo`` starts it; ``pip install imagegpt[demo]`` brings Gradio, which is imported only
inside these functions (``import imagegpt`` never loads it).

The computing lives in :mod:`imagegpt.demo_core` and the pictures in :mod:`imagegpt.demo_render`; this module
lays out the page and turns every :class:`~imagegpt.demo_core.DemoInputError` into a message in it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from imagegpt.demo_core import (BLANK_COLOR, MAX_PIXELS, MAX_UPLOAD_BYTES, DemoInputError, Frame, ModelChoices,
                                example_images, fit_note, quantize, read_image, stream_complete, stream_sample,
                                surprise)  # fmt: skip
from imagegpt.demo_render import display_scale, heat_map, strip, with_cut

logger = logging.getLogger(__name__)

__all__ = ["build_app", "launch", "DEFAULT_CONCURRENCY"]

DEFAULT_CONCURRENCY = 2  # model jobs at once (complete, sample, look inside), all users together; the rest queue
LIMITS = (f"Uploads: at most {MAX_UPLOAD_BYTES / 2**20:.0f} MiB and {MAX_PIXELS / 1e6:.1f} megapixels; any format "
          "Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP), any mode (RGBA, 16-bit, palette, CMYK, ...).")  # fmt: skip
# model pixels stay crisp squares when the browser scales a picture
CSS = ("#completions img, #samples img, #surprise img, #cut-preview img, #input-image img, #inside-image img "
       "{image-rendering: pixelated;} "
       "#input-image img, #inside-image img {width: 100%; height: 100%; object-fit: contain;}")
INTRO = """# ImageGPT, row by row
An autoregressive transformer paints an image one pixel at a time, top to bottom, each pixel one of a small palette
of colors. **Complete**: keep the top rows of an image and watch it paint the rest. **Sample**: images from nothing.
**Look inside**: how surprised the model is by each pixel."""


def _warn(message: str) -> str:
    return f"⚠️ {message}"


def _status(frame: Frame, kept: int, label: str) -> str:
    """'row r of H' first: tests and people read the progress from it."""
    text = f"**row {frame.rows_done} of {frame.height}** {label}"
    painted = frame.rows_done - kept
    if frame.first_row_seconds is not None and painted > 0:
        rate = painted / frame.seconds if frame.seconds > 0 else float("inf")
        text += f" · first row after {frame.first_row_seconds:.2f} s · {rate:.1f} rows/s"
    return text + (" · done" if frame.rows_done == frame.height else "")


def _app_functions(choices: ModelChoices) -> dict[str, Any]:
    """The page's callbacks, closed over ``choices``; plain functions, callable without a server."""

    def model_info(name: str) -> tuple[str, Any]:
        try:
            entry = choices.get(name)
        except DemoInputError as e:
            return _warn(str(e)), None
        return entry.describe(), entry.height

    def preview(path: str | None, name: str, rows: int) -> tuple[np.ndarray | None, str]:
        try:
            entry = choices.get(name)
            rgb, notes = read_image(path)
            _, _, quantized, error = quantize(entry, rgb)
        except DemoInputError as e:
            return None, _warn(str(e))
        except Exception as e:  # never a dead page
            logger.exception("preview failed")
            return None, _warn(f"internal error: {type(e).__name__}: {e}")
        rows = int(min(max(rows or 0, 0), entry.height - 1))
        lines = [f"Keeping the top **{rows}** of {entry.height} rows (above the line); the model paints the rest."]
        lines += [f"Note: {n}." for n in notes]
        if (poor := fit_note(entry, error)) is not None:
            lines.append(_warn(poor))
        return with_cut(quantized, rows, display_scale(entry.height, entry.width), dim_below=True), "\n\n".join(lines)

    def complete(path, name, rows, samples, temperature, top_k, top_p, seed) -> Iterator[tuple[Any, str]]:
        try:
            entry = choices.get(name)
            rgb, _ = read_image(path)
            _, _, original, _ = quantize(entry, rgb)
            scale = display_scale(entry.height, entry.width)
            for frame in stream_complete(entry, rgb, rows, samples, temperature, top_k, top_p, seed):
                prompt = frame.images[0].copy()
                prompt[int(rows) :] = BLANK_COLOR
                picture = strip([prompt, *frame.images, original], scale, cut=int(rows))
                yield picture, _status(frame, int(rows), "· [kept | completions | input as the model sees it]")
        except DemoInputError as e:
            yield None, _warn(str(e))
        except Exception as e:  # never a dead page: say what happened, keep the server up
            logger.exception("completion failed")
            yield None, _warn(f"internal error: {type(e).__name__}: {e}")

    def sample(name, n, temperature, top_k, top_p, seed) -> Iterator[tuple[Any, str]]:
        try:
            entry = choices.get(name)
            scale = display_scale(entry.height, entry.width)
            for frame in stream_sample(entry, n, temperature, top_k, top_p, seed):
                yield strip(list(frame.images), scale), _status(frame, 0, "· unconditional samples")
        except DemoInputError as e:
            yield None, _warn(str(e))
        except Exception as e:
            logger.exception("sampling failed")
            yield None, _warn(f"internal error: {type(e).__name__}: {e}")

    def look_inside(path: str | None, name: str) -> tuple[np.ndarray | None, str]:
        try:
            entry = choices.get(name)
            rgb, notes = read_image(path)
            _, _, _, error = quantize(entry, rgb)
            quantized, bits, bpd = surprise(entry, rgb)
        except DemoInputError as e:
            return None, _warn(str(e))
        except Exception as e:  # never a dead page
            logger.exception("look inside failed")
            return None, _warn(f"internal error: {type(e).__name__}: {e}")
        picture, vmax = heat_map(quantized, bits, display_scale(entry.height, entry.width))
        uniform = np.log2(entry.colors)
        worst = np.unravel_index(int(bits.argmax()), bits.shape)
        lines = [f"**{bpd:.3f} bits/dim**: −log₂ p of each of the {bits.size} pixels given the pixels before it, "
                 f"averaged (a uniform guess among {entry.colors} colors costs {uniform:.2f}). Left: the image as the "
                 f"model sees it; right: each pixel's surprise, dark = expected, bright = surprising (scale "
                 f"0–{vmax:g} bits). Most surprising: row {worst[0]}, column {worst[1]} ({bits.max():.1f} bits)."]
        lines += [f"Note: {n}." for n in notes]
        if (poor := fit_note(entry, error)) is not None:
            lines.append(_warn(poor))
        return picture, "\n\n".join(lines)

    return dict(model_info=model_info, preview=preview, complete=complete, sample=sample, look_inside=look_inside)


def drawing(value: dict | None) -> np.ndarray | None:
    """The Sketchpad's composite as (H, W, 3) uint8 on white paper (its canvas is transparent), or None if empty."""
    if not value or value.get("composite") is None:
        return None
    rgba = np.asarray(value["composite"], dtype=np.uint8)
    if rgba.ndim == 2:
        return np.repeat(rgba[..., None], 3, axis=2)
    if rgba.shape[-1] == 4:
        alpha = rgba[..., 3:4].astype(np.float64) / 255
        return np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return rgba[..., :3]


@functools.cache
def _raw_image_class():
    """gr.Image whose upload reaches our code as the file's path, undecoded: Gradio's own decoding would fail on a
    non-image file (or a decompression bomb) before :func:`read_image` could say why in the page."""
    import gradio as gr
    from gradio import component_meta, processing_utils

    # Gradio's component metaclass writes a .pyi stub beside the module of every new component class (meant for
    # custom-component packages): it would write into this installed package. Not for this private subclass.
    write_stub = component_meta.create_or_modify_pyi
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:

        class RawImage(gr.Image):
            is_template = True  # the browser side is gr.Image's

            def preprocess(self, payload):
                if payload is None:
                    return None
                if payload.url and payload.url.startswith("data:"):
                    return processing_utils.save_base64_to_cache(payload.url, self.GRADIO_CACHE)
                return payload.path

    finally:
        component_meta.create_or_modify_pyi = write_stub
    return RawImage


def _sketchpad(gr):
    """A black sheet (as Fashion-MNIST's backgrounds) and a white brush by default; grays and colors to pick."""
    paper = np.zeros((280, 280, 3), dtype=np.uint8)
    brush = gr.Brush(default_size=16, default_color="#ffffff", color_mode="defaults",
                     colors=["#ffffff", "#b0b0b0", "#606060", "#000000", "#e53935", "#fdd835", "#43a047", "#1e88e5"])
    return gr.Sketchpad(value={"background": paper, "layers": [], "composite": None}, type="numpy",
                        canvas_size=(280, 280), brush=brush, label="pick the brush, draw, then press Complete",
                        elem_id="sketch")  # fmt: skip


def _sampling_controls(gr) -> list:
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature", info="< 1: safer colors")
            top_k = gr.Slider(0, 64, value=0, step=1, label="top-k", info="0: off")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", info="1: off")
            seed = gr.Number(0, precision=0, label="seed", info="same seed, same images")
    return [temperature, top_k, top_p, seed]


def build_app(models: Sequence[str] | ModelChoices = (), *, concurrency: int = DEFAULT_CONCURRENCY,
              max_queue: int = 32, device: str = "cpu"):  # fmt: skip
    """The Gradio Blocks of the demo over ``models`` (names or directories; packaged models are always offered),
    queued: at most ``concurrency`` model jobs run at once, ``max_queue`` wait."""
    import gradio as gr

    choices = models if isinstance(models, ModelChoices) else ModelChoices(models, device=device)
    fn = _app_functions(choices)
    RawImage = _raw_image_class()
    examples = example_images()
    heavy = dict(concurrency_limit=concurrency, concurrency_id="model")  # one budget for all model jobs
    light = dict(concurrency_limit=None, show_progress="hidden", api_name=False)

    with gr.Blocks(title="ImageGPT demo", delete_cache=(3600, 3600), analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(choices.names, value=choices.names[0], label="model", scale=1)
            info = gr.Markdown(elem_id="model-info")
        with gr.Tabs():
            with gr.Tab("Complete", id="complete"):
                with gr.Row():
                    with gr.Column(scale=3):
                        gallery = gr.Gallery([(str(p), label) for p, _, label in examples], label=f"examples of "
                                             f"{', '.join(dict.fromkeys(m for _, m, _ in examples))}: click one",
                                             columns=6, height=230, allow_preview=False, elem_id="examples")
                        with gr.Tabs():
                            with gr.Tab("Upload or paste"):
                                image = RawImage(type="filepath", image_mode=None, label="image", height=240,
                                                 sources=["upload", "clipboard"], elem_id="input-image")
                            with gr.Tab("Draw"):
                                sketch = _sketchpad(gr)
                        gr.Markdown(LIMITS)
                    with gr.Column(scale=2):
                        cut = gr.Image(label="what the model keeps", format="png", interactive=False, height=240,
                                       elem_id="cut-preview")  # fmt: skip
                        rows = gr.Slider(0, 27, value=14, step=1, label="rows to keep (from the top)",
                                         elem_id="rows-slider")
                        samples = gr.Slider(1, 8, value=4, step=1, label="samples", elem_id="samples-slider")
                        cut_note = gr.Markdown()
                controls = _sampling_controls(gr)
                with gr.Row():
                    go = gr.Button("Complete", variant="primary", elem_id="complete-button")
                    stop = gr.Button("Stop", variant="stop", elem_id="complete-stop")
                result = gr.Image(label="completions", format="png", interactive=False, elem_id="completions")
                status = gr.Markdown(elem_id="complete-status")
            with gr.Tab("Sample", id="sample"):
                n = gr.Slider(1, 16, value=8, step=1, label="images")
                sample_controls = _sampling_controls(gr)
                with gr.Row():
                    sample_go = gr.Button("Sample", variant="primary", elem_id="sample-button")
                    sample_stop = gr.Button("Stop", variant="stop")
                samples_out = gr.Image(label="samples", format="png", interactive=False, elem_id="samples")
                sample_status = gr.Markdown(elem_id="sample-status")
            with gr.Tab("Look inside", id="inside"):
                with gr.Row():
                    with gr.Column(scale=1):
                        inside_gallery = gr.Gallery([(str(p), label) for p, _, label in examples], label="examples",
                                                    columns=4, height=200, allow_preview=False)  # fmt: skip
                        inside_image = RawImage(type="filepath", image_mode=None, label="image", height=200,
                                                sources=["upload", "clipboard"], elem_id="inside-image")
                        inside_go = gr.Button("Look inside", variant="primary")
                    with gr.Column(scale=2):
                        inside_out = gr.Image(label="the image as the model sees it | surprise per pixel",
                                              format="png", interactive=False, elem_id="surprise")  # fmt: skip
                        inside_status = gr.Markdown(elem_id="inside-status")

        def on_model(name: str, kept: int):
            text, height = fn["model_info"](name)
            if height is None:
                return text, gr.update()
            return text, gr.update(maximum=height - 1, value=min(int(kept), height - 1))

        def pick(evt):
            path, name, _ = examples[evt.index]
            return str(path), (name if name in choices.names else gr.update())

        pick.__annotations__["evt"] = gr.SelectData  # gradio passes the event by this type (not a string)

        def drawn(value):
            rgb = drawing(value)
            return gr.update() if rgb is None else rgb

        app.load(on_model, [model, rows], [info, rows], **light)
        model.change(on_model, [model, rows], [info, rows], **light)
        gallery.select(pick, None, [image, model], **light)
        inside_gallery.select(pick, None, [inside_image, model], **light)
        sketch.input(drawn, sketch, image, trigger_mode="always_last", **light)  # a stroke (not .change: no event)
        for i, trigger in enumerate((image.change, rows.release, model.change)):  # light: never queued behind jobs
            trigger(fn["preview"], [image, model, rows], [cut, cut_note], **{**light, "api_name": i == 0 and "preview"})
        job = go.click(fn["complete"], [image, model, rows, samples, *controls], [result, status],
                       api_name="complete", **heavy)  # fmt: skip
        stop.click(None, None, None, cancels=[job], api_name=False)
        sample_job = sample_go.click(fn["sample"], [model, n, *sample_controls], [samples_out, sample_status],
                                     api_name="sample", **heavy)  # fmt: skip
        sample_stop.click(None, None, None, cancels=[sample_job], api_name=False)
        for trigger, api in ((inside_go.click, "look_inside"), (inside_image.change, False)):
            trigger(fn["look_inside"], [inside_image, model], [inside_out, inside_status], api_name=api, **heavy)
    app.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return app


def _theme(gr):
    """Gradio's Soft theme on the system's fonts: a local demo fetches nothing from the internet."""
    return gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(models: Sequence[str] = (), host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           concurrency: int = DEFAULT_CONCURRENCY, device: str = "cpu", block: bool = True):  # fmt: skip
    """Build the app and serve it on ``host``:``port`` (127.0.0.1: this machine only). Returns the app; with
    ``block=False`` it serves from a background thread until ``app.close()``."""
    import gradio as gr

    app = build_app(models, concurrency=concurrency, device=device)
    app.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES, quiet=True,
               prevent_thread_lock=not block, footer_links=["api"], theme=_theme(gr), css=CSS, ssr_mode=False)
    return app
