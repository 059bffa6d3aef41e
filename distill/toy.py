"""The toy teacher: a small LatentSync-architecture model trained on the synthetic world.

Official weights cannot be downloaded here, so the demo, the CPU benchmarks and the
distillation tests start from a teacher we train ourselves: a tiny ``AutoencoderKL``
(8x down-sampling, 4 latent channels, like sd-vae-ft-mse) fitted to aligned synthetic faces,
the random Whisper-tiny encoder of the tiny preset (its features are a fixed, deterministic
function of the audio), and a LatentSync U-Net (widths 32-64, motion modules, 384-d audio
cross-attention) trained with LatentSync's stage-2 recipe: epsilon prediction, mixed noise
(alpha 1), no audio dropout, plus a heavier weight on the mouth region, which a uniform loss
learns too slowly (DESIGN section 6).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

TOY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 128,
    "scaling_factor": 0.18215,
}


@dataclass
class ToyConfig:
    resolution: int = 128
    num_frames: int = 8
    vae_steps: int = 1500
    vae_batch: int = 8
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 4000
    unet_batch: int = 4
    unet_lr: float = 3e-4
    mouth_weight: float = 4.0  # loss weight inside the generated (mask == 0) region
    x0_weight: float = 0.2  # weight of the x0-space MSE inside the generated region (see diffusion_loss)
    mixed_noise_alpha: float = 1.0
    seed: int = 0
    log_every: int = 50
    unet_widths: list[int] = field(default_factory=lambda: [32, 64, 64, 64])


def diffusion_loss(
    unet,
    batch: dict,
    alphas_cumprod: torch.Tensor,
    mouth_weight: float,
    alpha: float,
    generator=None,
    x0_weight: float = 0.0,
) -> torch.Tensor:
    """Epsilon-prediction MSE (LatentSync's recon loss) with the mouth region weighted up, plus
    ``x0_weight`` times the MSE of the implied x0 = (x_t - sqrt(1 - a) eps_pred) / sqrt(a) inside
    the generated region.

    Why the x0 term: the eps loss weights x0 errors by SNR(t) = a / (1 - a), about 1/200 at
    t = 999, so the high-noise steps that decide the mouth shape in sampling, where only the
    audio can tell open from closed, give almost no gradient. (The teacher trained 2500 steps on
    the eps loss alone reached held-out sync 0.23 while a ridge probe reads the mouth opening
    from its audio features with r = 0.99.) LatentSync closes the same gap with its SyncNet loss
    on decoded x0. Measured: 1500 more steps at lr 2e-4 with x0_weight 0.2 or 1.0 both reached
    sync 0.71; no eps-only run of the same length was made, so how much of the gain is this term
    and how much is the longer training is not known.
    """
    from student.sampler import video_noise
    from teacher.conditioning import condition_channels, unet_input

    x0 = batch["latents"]
    b = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator)
    eps = video_noise(tuple(x0.shape), "mixed", generator, mixed_alpha=alpha)
    ab = alphas_cumprod[t].view(b, 1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    mask = batch["mask_latent"]  # [B, 1, F, h, w], 1 = keep
    sample = unet_input(x_t, condition_channels(mask, batch["masked_latents"], batch["ref_latents"]))
    pred = unet(sample, t, batch["audio_embeds"])
    weight = 1 + (mouth_weight - 1) * (1 - mask)
    loss = ((pred - eps).square() * weight).mean()
    if x0_weight:
        x0_pred = (x_t - (1 - ab).sqrt() * pred) / ab.sqrt()
        gen = (1 - mask).expand_as(x0)
        loss = loss + x0_weight * ((x0_pred - x0).square() * gen).sum() / gen.sum().clamp_min(1)
    return loss


def train_vae(frames: torch.Tensor, cfg: ToyConfig, log=print):
    """Fit the toy ``AutoencoderKL`` to face crops ``[N, 3, R, R]`` in [-1, 1] (L1 + mouth L1 + tiny KL)."""
    from diffusers import AutoencoderKL

    from teacher.conditioning import face_mask
    from teacher.vae import VideoVAE

    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**TOY_VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.vae_lr, total_steps=cfg.vae_steps, pct_start=0.05)
    mouth = 1 - face_mask(frames.shape[-1])
    t0 = time.time()
    for step in range(cfg.vae_steps):
        x = frames[torch.randint(0, len(frames), (cfg.vae_batch,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        err = (rec - x).abs()
        loss = err.mean() + 2.0 * (err * mouth).mean() + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}/{cfg.vae_steps} loss {loss.item():.4f} l1 {err.mean().item():.4f} "
                f"({time.time() - t0:.0f} s)")  # fmt: skip
    return VideoVAE(vae.eval())


@torch.no_grad()
def calibrate_scaling(vae, frames: torch.Tensor, batch: int = 32):
    """Set the latent scale to 1 / std of the posterior means, as Stable Diffusion chose 0.18215 for its
    VAE, so the diffusion model sees unit-variance latents (a tiny VAE's raw latents have another scale)."""
    means = [vae.vae.encode(frames[i : i + batch]).latent_dist.mean for i in range(0, len(frames), batch)]
    scale = 1.0 / float(torch.cat(means).std())
    vae.vae.register_to_config(scaling_factor=scale)
    vae.scaling_factor = scale
    return vae


def teacher_model_config(cfg: ToyConfig) -> dict:
    import configs

    model = dict(configs.load("teacher/tiny").model)
    model.update(block_out_channels=list(cfg.unet_widths), sample_size=cfg.resolution // 8)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(model))


def train_teacher(
    dataset, cfg: ToyConfig, log=print, on_checkpoint=None, checkpoint_every: int = 500, init_state: dict | None = None
):
    """Train the toy LatentSync U-Net on ``ClipDataset(latents=True)`` items (cached VAE posteriors);
    ``init_state`` (a state dict) continues from earlier weights with a fresh optimizer and schedule."""
    from teacher.conditioning import latent_mask
    from teacher.sampler import alphas_cumprod
    from teacher.unet import LatentSyncUNet

    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    unet = LatentSyncUNet(**teacher_model_config(cfg))
    if init_state is not None:
        unet.load_state_dict({k: v.float() for k, v in init_state.items()}, strict=True)
    acp = alphas_cumprod()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.unet_steps)))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.unet_batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    h = cfg.resolution // 8
    step, t0, ema = 0, time.time(), None
    while step < cfg.unet_steps:
        for batch in loader:
            b = {k: batch[k] for k in ("latents", "masked_latents", "ref_latents", "audio_embeds")}
            b["mask_latent"] = latent_mask(batch["mask"], h)
            loss = diffusion_loss(unet, b, acp, cfg.mouth_weight, cfg.mixed_noise_alpha, g, cfg.x0_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            sched.step()
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            if step % cfg.log_every == 0:
                log(f"unet step {step}/{cfg.unet_steps} loss {ema:.4f} lr {sched.get_last_lr()[0]:.2e} "
                    f"({time.time() - t0:.0f} s)")  # fmt: skip
            step += 1
            if on_checkpoint is not None and step % checkpoint_every == 0:
                on_checkpoint(unet, step)
            if step >= cfg.unet_steps:
                break
    return unet.eval()


def save_toy(out_dir: str | Path, unet, vae, cfg: ToyConfig, command: str, extra: dict | None = None) -> Path:
    """Write ``unet.safetensors`` (fp16), ``vae/`` (diffusers folder, fp16) and ``toy.json``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(out / "unet.safetensors"))
    vae.vae.to(torch.float16).save_pretrained(out / "vae", safe_serialization=True)
    vae.vae.to(torch.float32)
    info = {"config": asdict(cfg), "model": teacher_model_config(cfg), "command": command, **(extra or {})}
    (out / "toy.json").write_text(json.dumps(info, indent=1))
    return out


def face_frames(root: str | Path, limit: int | None = None) -> torch.Tensor:
    """All aligned face crops of the shards under ``root`` as ``[N, 3, R, R]`` in [-1, 1]."""
    from distill.data import list_shards
    from teacher.conditioning import crops_to_pixels
    from teacher.media import VideoReader

    out = []
    for shard in list_shards(root):
        frames = VideoReader(shard.path / "faces.mp4").get_frames(np.arange(shard.num_frames))
        out.append(crops_to_pixels(frames).permute(1, 0, 2, 3))
        if limit and sum(len(o) for o in out) >= limit:
            break
    return torch.cat(out)[:limit]
