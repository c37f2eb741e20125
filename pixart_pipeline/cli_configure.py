"""``pixart-pipeline configure``: write ``config.json`` and ``multidatabackend.json`` by answering questions.

Like SimpleTuner's ``configure.py``: each question shows its default (Enter takes it), a bad answer
is asked again with the reason, and the safety checks SimpleTuner's wizard makes are made here:

* a validation resolution off PixArt's grid (width and height multiples of 16) is refused;
* ``train_batch_size x gradient_accumulation_steps`` larger than the dataset, or than its smallest
  aspect bucket (those images would never fill a batch and are dropped), is asked again;
* a full fine-tune learning rate above 1e-4 asks for confirmation.

Unlike SimpleTuner's, it writes the dataset file too. The result is loaded with ``load_config``
before the wizard ends, so what it writes is what ``validate`` accepts. Questions read standard
input line by line, so a script can drive it (``printf '...' | pixart-pipeline configure``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Callable, TextIO

from pixart_pipeline.config import ConfigError, load_config
from pixart_pipeline.config.models import DEFAULT_BASE_MODEL, ImageDataset, parse_resolutions

MAX_PROBED_IMAGES = 5000  # above this the bucket check counts files only (probing would be slow)


class Wizard:
    """Asks on ``out``, reads answers from ``inp``; an exhausted input takes every remaining default."""

    def __init__(self, inp: TextIO, out: TextIO) -> None:
        self.inp, self.out = inp, out

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def ask(self, question: str, default: str, parse: Callable[[str], object] = str) -> object:
        """The parsed answer (Enter: ``default``); a ValueError from ``parse`` is shown and asked again."""
        while True:
            self.out.write(f"{question} [{default}]: ")
            self.out.flush()
            line = self.inp.readline()
            answer = line.strip() or default
            try:
                return parse(answer)
            except ValueError as exc:
                self.say(f"  ! {exc}")
                if not line:  # end of input: the default itself is bad, nothing more to read
                    raise SystemExit(f"configure: no valid answer for {question!r}") from None

    def yes(self, question: str, default: bool) -> bool:
        return self.ask(question, "y" if default else "n", _yes_no)


def _yes_no(text: str) -> bool:
    if text.lower() in ("y", "yes"):
        return True
    if text.lower() in ("n", "no"):
        return False
    raise ValueError("answer y or n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _resolution(text: str) -> str:
    parse_resolutions(text)  # ValueError naming the part off PixArt's grid
    return text


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return text
    return parse


def bucket_sizes(folder: Path, dataset: ImageDataset) -> dict[str, int] | None:
    """Images per aspect bucket of ``folder`` under ``dataset``'s geometry, or None when the folder
    has more than ``MAX_PROBED_IMAGES`` images (only their count is checked then)."""
    from PIL import Image

    from pixart_pipeline.data.buckets import geometry_function
    from pixart_pipeline.data.walk import IMAGE_EXTENSIONS

    files = [p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS]
    if len(files) > MAX_PROBED_IMAGES:
        return None
    geometry = geometry_function(dataset)
    buckets: dict[str, int] = {}
    for path in files:
        try:
            with Image.open(path) as image:
                size = image.size
        except OSError:
            continue
        result = geometry(size[0], size[1], "0" * 64)
        if not isinstance(result, str):
            buckets[result.bucket] = buckets.get(result.bucket, 0) + 1
    return buckets


def ask_dataset(w: Wizard, base: Path) -> dict:
    """The image dataset entry."""
    w.say("\n-- dataset")
    folder = w.ask("Folder of your training images (relative to the config folder, or absolute)", "datasets/train")
    strategy = w.ask("Captions from: filename, textfile (a .txt beside each image) or instanceprompt",
                     "filename", _choice("filename", "textfile", "instanceprompt"))
    entry = {"id": w.ask("Dataset id", "my-dataset"), "type": "local", "instance_data_dir": folder,
             "caption_strategy": strategy}
    if strategy == "instanceprompt":
        entry["instance_prompt"] = w.ask("The caption of every image", "a photo of sks")
    entry["resolution"] = w.ask("Training resolution (pixel edge, area-preserving)", "1024", _positive_int)
    entry["resolution_type"] = "pixel_area"
    entry["minimum_image_size"] = w.ask("Skip images smaller than (pixels)", str(entry["resolution"] // 2),
                                        lambda t: int(t))
    if w.yes("Crop every image to a square (one bucket)?", False):
        entry |= {"crop": True, "crop_aspect": "square", "crop_style": "center"}
    holdout = w.ask("Images held out for the eval loss: auto (a few), 0 (none, as SimpleTuner), or a fraction",
                    "auto", lambda t: None if t == "auto" else _fraction(t))
    if holdout is not None:
        entry["eval_split_fraction"] = holdout
    entry["cache_dir_vae"] = f"cache/vae/{entry['id']}"
    return entry


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError("a fraction from 0 to below 1")
    return value


def ask_batch(w: Wizard, base: Path, entry: dict) -> tuple[int, int]:
    """Batch size and accumulation, asked again while one optimizer step needs more images than the
    dataset or its smallest bucket holds (SimpleTuner's check)."""
    folder = Path(entry["instance_data_dir"]).expanduser()
    folder = folder if folder.is_absolute() else base / folder
    buckets = None
    if folder.is_dir():
        ds = ImageDataset.model_validate({k: v for k, v in entry.items() if k != "cache_dir_vae"})
        buckets = bucket_sizes(folder, ds)
        if buckets:
            w.say(f"  {sum(buckets.values())} usable images in {len(buckets)} bucket(s): {buckets}")
    else:
        w.say(f"  ({folder} does not exist yet: the batch size cannot be checked against it)")
    while True:
        batch = w.ask("train_batch_size", "1", _positive_int)
        accumulation = w.ask("gradient_accumulation_steps", "1", _positive_int)
        step = batch * accumulation
        if buckets:
            total, smallest = sum(buckets.values()), min(buckets.items(), key=lambda kv: kv[1])
            if step > total:
                w.say(f"  ! one optimizer step needs {step} images but the dataset has {total}: choose a smaller batch")
                continue
            if step > smallest[1]:
                w.say(f"  ! bucket {smallest[0]} has {smallest[1]} image(s), fewer than one step ({step}): "
                      "they would never be trained on (small buckets are dropped, as in SimpleTuner)")
                if not w.yes("  Keep this batch size anyway?", False):
                    continue
        return batch, accumulation


def ask_config(w: Wizard, base: Path, entry: dict) -> dict:
    """The config.json keys."""
    w.say("\n-- model and training")
    config: dict = {"model_family": "pixart_sigma", "model_type": "full"}
    config["pretrained_model_name_or_path"] = w.ask("Base model (hub id, local folder, or tiny-random to try it "
                                                    "on a CPU)", DEFAULT_BASE_MODEL)
    config["output_dir"] = w.ask("Where runs, checkpoints and reports go", "output/models")
    config["data_backend_config"] = "multidatabackend.json"
    config["train_batch_size"], config["gradient_accumulation_steps"] = ask_batch(w, base, entry)
    config["max_train_steps"] = w.ask("max_train_steps", "1000", _positive_int)
    while True:
        lr = w.ask("learning_rate", "1e-6", _learning_rate)
        if lr <= 1e-4 or w.yes(f"  {lr:g} is high for a full fine-tune (SimpleTuner suggests <= 1e-5); keep it?", False):
            break
    config["learning_rate"] = lr
    config["mixed_precision"] = w.ask("mixed_precision (no on a Mac or a CPU)", "bf16", _choice("bf16", "fp16", "no"))
    config["checkpointing_steps"] = w.ask("Save a checkpoint every N steps", "500", _positive_int)
    w.say("\n-- validation and tracking")
    config["validation_prompt"] = w.ask("Validation prompt", "a photo of a cat")
    config["validation_resolution"] = w.ask("Validation resolution(s), WxH[,WxH] on PixArt's grid (multiples of 16)",
                                            "1024x1024", _resolution)
    config["validation_guidance"] = w.ask("validation_guidance (PixArt likes 3.6 to 4.4)", "4.0", float)
    config["validation_steps"] = w.ask("Render the validation images every N steps", "100", _positive_int)
    config["eval_steps_interval"] = w.ask("Stable eval loss every N steps", "100", _positive_int)
    config["report_to"] = w.ask("report_to", "none", _choice("none", "wandb", "tensorboard", "all"))
    return config


def _learning_rate(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def run_configure(folder: Path, inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """Ask, write ``folder/config.json`` and ``folder/multidatabackend.json``, validate them."""
    w = Wizard(inp, out)
    w.say("pixart-pipeline configure: Enter keeps the [default].")
    folder = Path(w.ask("Folder to write config.json and multidatabackend.json into", str(folder))).resolve()
    targets = [folder / "config.json", folder / "multidatabackend.json"]
    if any(p.exists() for p in targets) and not w.yes(f"Overwrite the files in {folder}?", False):
        w.say("Nothing written.")
        return 1
    entry = ask_dataset(w, folder)
    config = ask_config(w, folder, entry)
    text = {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True,
            "cache_dir": "cache/text"}
    folder.mkdir(parents=True, exist_ok=True)
    targets[0].write_text(json.dumps(config, indent=2) + "\n")
    targets[1].write_text(json.dumps([entry, text], indent=2) + "\n")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_config(targets[0])
    except ConfigError as exc:  # a wizard bug: say so rather than leave a file validate refuses
        w.say(f"\nThe written files do not validate: {exc}")
        return 2
    w.say(f"\nWrote {targets[0]} and {targets[1]}; `pixart-pipeline validate --config {targets[0]}` accepts them.")
    return 0
