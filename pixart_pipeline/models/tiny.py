"""Tiny, random, deterministic PixArt Sigma and CLIP folders for tests and the demo.

They use the real diffusers / transformers classes with tiny configs (like diffusers' own
``tests/pipelines/pixart_sigma`` fast tests), are saved with ``save_pretrained`` and loaded back through
the same ``from_pretrained`` calls that load ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``. No network.

Sizes (the contract relies on them): T5 d_model 32 (prompt_embeds [L, 32]); VAE 4 latent channels,
downsample 8, a near-deterministic posterior and a scaling factor calibrated to unit-variance latents
(what SDXL's 0.13025 does for the real VAE); transformer patch 2,
in 4 / out 8 channels (learned sigma), sample_size 16 (128 px), caption_channels 32.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
import uuid
from pathlib import Path

import torch

from pixart_pipeline.config.models import TINY_MODEL_REVISION as TINY_REVISION  # noqa: F401 (re-export)

# A small English + colour/shape corpus: enough for the synthetic "shapes" captions and validation
# prompts to tokenize into real sub-words instead of <unk>.
_COLOURS = "red green blue yellow orange purple pink brown black white grey gray cyan magenta teal gold silver"
_SHAPES = "circle square triangle star rectangle ellipse oval hexagon diamond cross heart line dot ring shape shapes"
_WORDS = (
    "a an the on of in with and or at to by from over under near next left right top bottom middle centre "
    "center background foreground small large big tiny huge bright dark light pale deep plain solid striped "
    "photo picture painting drawing image render illustration art style of cat dog bird tree house car sky sea "
    "sun moon flower person face hand blurry cropped ugly sharp detailed simple high quality low two three one "
    "many single is are this that it very some its"
)
TOKENIZER_VOCAB_SIZE = 512
T5_MAX_LENGTH = 300  # PixArt Sigma's max_sequence_length
_CHAR_SCORE = -20.0  # log-prob of a single-character piece: below every trained multi-character piece


def _corpus() -> list[str]:
    """Deterministic sentences mixing every word, colour and shape."""
    colours, shapes, words = _COLOURS.split(), _SHAPES.split(), _WORDS.split()
    lines = [" ".join(words), " ".join(colours), " ".join(shapes)]
    for i, colour in enumerate(colours):
        for j, shape in enumerate(shapes):
            other = colours[(i + j + 1) % len(colours)]
            lines.append(f"a {colour} {shape} on a {other} background")
            lines.append(f"A {words[(i * 7 + j) % len(words)]} {colour} {shape}, {other}.")
    return lines


def _t5_tokenizer():
    """A Unigram tokenizer trained here with ``tokenizers``, wrapped as transformers' ``T5Tokenizer``.

    T5 conventions: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, SentencePiece-style ``▁`` word prefix,
    ``</s>`` appended to every sequence.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    backend = Tokenizer(models.Unigram())
    # Same pre-tokenization as transformers' T5Tokenizer, so trained pieces carry the "▁" prefix.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    trained = json.loads(backend.to_str())["model"]["vocab"]
    specials, pieces = trained[:3], trained[3:]
    assert [p for p, _ in specials] == ["<pad>", "</s>", "<unk>"], specials
    # The Unigram trainer's scores differ in the last float bits from run to run, and it gives rare
    # single characters arbitrary-order tail scores. So: multi-character pieces keep their score rounded
    # to 4 decimals; every printable ASCII character (seen or not, so only exotic characters become
    # <unk>) gets one fixed low score; ties sort by piece. The vocab is then bit-for-bit reproducible.
    words = [(p, round(float(s), 4)) for p, s in pieces if len(p) > 1 or p == "▁"]
    chars = set(string.ascii_letters + string.digits + string.punctuation)
    chars |= {p for p, _ in pieces if len(p) == 1 and p != "▁"}
    vocab = sorted(words + [(c, _CHAR_SCORE) for c in chars], key=lambda ps: (-ps[1], ps[0]))
    vocab = [(p, 0.0) for p, _ in specials] + vocab
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _tiny_components(vocab_size: int, seed: int) -> dict:
    """Random tiny T5 encoder, VAE, transformer and scheduler (each seeded on its own)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as in DeepFloyd/t5-v1_1-xxl
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamples -> factor 8
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=128,
        scaling_factor=1.0,  # calibrated below
        force_upcast=True,
    ).eval()
    _calibrate_vae(vae)
    torch.manual_seed(seed + 2)
    transformer = PixArtTransformer2DModel(
        sample_size=16,  # latent size: 16 * 8 = 128 px
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=4,
        cross_attention_dim=32,  # heads * head_dim
        caption_channels=32,  # = T5 d_model
        in_channels=4,
        out_channels=8,  # learned sigma: epsilon (4) + variance (4)
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    ).eval()
    # The real repo ships DPMSolverMultistepScheduler's defaults (linear betas 1e-4..0.02, 1000 steps,
    # epsilon); training builds a DDPMScheduler from this same config.
    scheduler = DPMSolverMultistepScheduler()
    return {"text_encoder": text_encoder, "vae": vae, "transformer": transformer, "scheduler": scheduler}


def _calibrate_vae(vae, log_std: float = -5.0) -> None:
    """Make a random VAE behave like a trained one where training depends on it.

    A random encoder's posterior has logvar ~ 0 (std ~ 1) and a small mean, so sampled latents would be
    almost pure noise and learning to predict the noise nearly trivial. Like a trained VAE, make the
    posterior nearly deterministic (constant logvar ``2 * log_std``: the logvar half of ``quant_conv``)
    and choose ``scaling_factor`` so the scaled means have unit variance on smooth images, which is how
    SDXL's 0.13025 was chosen (Rombach et al., arXiv:2112.10752, appendix on latent rescaling).
    """
    channels = vae.config.latent_channels
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        quant = vae.quant_conv  # Conv2d(2C, 2C, 1): outputs [mean (C), logvar (C)]
        quant.weight[channels:] = 0.0
        quant.bias[channels:] = 2 * log_std
        # Smooth test images: low-resolution noise upsampled, in [-1, 1]. [8, 3, 128, 128]
        coarse = torch.rand(8, 3, 8, 8, generator=generator) * 2 - 1
        images = torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bilinear", align_corners=False)
        mean = vae.encode(images).latent_dist.mean  # [8, C, 16, 16]
    vae.register_to_config(scaling_factor=round(1.0 / float(mean.std()), 5))


def _build_atomically(folder: Path, write) -> Path:
    """Run ``write(tmp_dir)`` and rename the result to ``folder``; the first finished builder wins.

    Two processes may build at once: each writes its own temp folder; ``os.rename`` of a directory onto
    an existing non-empty one fails, so the loser just deletes its copy (both copies are identical).
    """
    folder = Path(folder)
    if (folder / "model_index.json").exists() or (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}-", dir=folder.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_tiny_pixart(folder: Path, seed: int = 0) -> Path:
    """Build (once) a tiny random PixArt Sigma diffusers pipeline folder at ``folder``.

    Stock ``diffusers.PixArtSigmaPipeline.from_pretrained(folder)`` loads it; sample with
    ``height=width=128, use_resolution_binning=False, clean_caption=False``. Deterministic in ``seed``.
    """
    from diffusers import PixArtSigmaPipeline

    def write(tmp: Path) -> None:
        tokenizer = _t5_tokenizer()
        parts = _tiny_components(len(tokenizer), seed)
        pipe = PixArtSigmaPipeline(tokenizer=tokenizer, **parts)
        pipe.save_pretrained(tmp, safe_serialization=True)

    return _build_atomically(Path(folder), write)


def _clip_byte_chars() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE maps bytes to (as in GPT-2's encoder)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b if b in printable else next(extra)) for b in range(256)]


def _clip_tokenizer():
    """A character-level CLIP tokenizer: every byte (and byte + ``</w>``) is a token, no merges.

    Built, not trained: BPE training breaks ties in a different order on every run, which made the
    tiny CLIP (and so the demo's CLIP score) differ from one build to the next.
    """
    from transformers import CLIPTokenizer

    chars = _clip_byte_chars()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Build (once) a tiny random CLIP (model + tokenizer + image processor, 32 px) at ``folder``.

    Saved as one ``CLIPProcessor`` folder, so ``CLIPModel.from_pretrained`` and
    ``CLIPProcessor.from_pretrained`` both load it.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    def write(tmp: Path) -> None:
        tokenizer = _clip_tokenizer()
        tokenizer.model_max_length = 77
        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            projection_dim=32,
        )
        model = CLIPModel(config).eval()
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)

    return _build_atomically(Path(folder), write)
