"""Student vs teacher on held-out synthetic clips: quality, sync, sharpness and speed.

For each held-out window (aligned 128 px faces, reference = the same frames, one noise frame
repeated over the window, as LatentSync infers) every method starts from the same noise:

    teacher_ddim_N  guided DDIM (s = 1.5, zero-audio unconditional branch); N = 1, 2, 4 with
                    trailing spacing (t starts at 999), N = 20 with the official leading spacing
    student_N       the consistency student on LCMScheduler's timesteps, w = 1.5, re-noising as
                    chosen (``sample_lcm``'s ``renoise``; the benchmark records which)
    oracle_lcm_N    the same sampler with a perfect consistency function (the teacher's ODE down
                    the LCD solver grid): the floor of any student re-noised the same way

Metrics (pixels in [0, 1], decoded and pasted like the pipeline: generated inside the mask,
original outside):

    mse_to_teacher20     MSE to teacher_ddim_20's output, over the generated (mask == 0) region
    mse_to_ground_truth  MSE to the real frames over the same region
    sync_score           Pearson correlation of measure_mouth(generated) with the true mouth opening,
                         over all held-out frames
    sharpness            mean squared Laplacian inside the mouth box, relative to the real frames
    detail_error         mean squared difference of the Laplacians of generated and real frames inside the
                         mouth box, relative to the real frames' (0: the real detail; 1: a flat mouth; more:
                         detail in the wrong places; sharpness alone counts noise as detail)
    unet_ms_per_frame    U-Net passes only;  ms_per_frame  U-Net passes + VAE decode

The windows' inputs come from ``teacher.conditioning`` and the student runs through its
``StudentDenoiser``, exactly as the pipeline and the engine run them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from teacher.sampler import OFFICIAL_W, repeated_noise

MOUTH_BOX = (0.22, 0.55, 0.78, 0.92)  # fraction of the aligned crop holding the mouth (x0, y0, x1, y1)


@dataclass
class Window:
    frames: torch.Tensor  # [1, 3, F, R, R] in [-1, 1]
    mask: torch.Tensor  # [1, 1, F, R, R] pixel mask, 1 = keep
    mask_latent: torch.Tensor  # [1, 1, F, h, h]
    masked_latents: torch.Tensor  # [1, 4, F, h, h]
    ref_latents: torch.Tensor
    audio_embeds: torch.Tensor  # [1, F, 50, 384]
    noise: torch.Tensor  # [1, 4, F, h, h], one frame repeated
    mouth_open: np.ndarray  # [F]
    audio: np.ndarray | None = None  # [F * 640] 16 kHz samples of the window (the LSE metrics)
    clip: int = -1  # the window's shard and first frame in it (the LSE metrics join a clip's windows back)
    start: int = 0
    other_audio_embeds: torch.Tensor | None = None  # another clip's audio (``shuffle_audio``)

    def to(self, device: str | torch.device) -> Window:
        """A copy with every tensor on ``device`` (the numpy fields stay); metrics still come out on the CPU."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return Window(**moved)


def make_windows(
    dataset, vae, seed: int = 0, limit: int | None = None, noise_seed: int | None = None
) -> list[Window]:
    """Encode held-out ``ClipDataset(reference="same")`` items once (the VAE samples, as the pipeline).

    ``noise_seed``: draw the windows' initial noise from its own generator (another noise draw on the
    same encodings); by default it comes from the encoding generator (``seed``)."""
    from teacher.conditioning import encode_condition, latent_mask

    out = []
    g = torch.Generator().manual_seed(seed)
    g_noise = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    for i in range(len(dataset) if limit is None else min(limit, len(dataset))):
        item = dataset[i]
        frames, mask = item["frames"][None], item["mask"][None]
        with torch.no_grad():
            masked, ref = encode_condition(vae, frames, mask, generator=g)
        h = masked.shape[-1]
        noise = repeated_noise((1, 4, frames.shape[2], h, h), g)  # drawn either way: the encodings stay the same
        if g_noise is not None:
            noise = repeated_noise(noise.shape, g_noise)
        out.append(Window(frames, mask, latent_mask(mask, h), masked, ref, item["audio_embeds"][None], noise,
                          item["mouth_open"].numpy(), None if item.get("audio") is None else item["audio"].numpy(),
                          int(item.get("shard", -1)), int(item.get("start", 0))))  # fmt: skip
    return out


def shuffle_audio(windows: list[Window]) -> list[Window]:
    """Give each window the audio of the window ``len // 2`` places on (another clip when there are two or
    more clips of equal length) as ``other_audio_embeds``: the input of the shuffled-audio control rows."""
    n = len(windows)
    for i, win in enumerate(windows):
        win.other_audio_embeds = windows[(i + n // 2) % n].audio_embeds
    return windows


def teacher_method(
    unet, n: int, w: float = OFFICIAL_W, noise_seed: int | None = None, shuffled_audio: bool = False
) -> Callable[[Window], torch.Tensor]:
    """Guided DDIM, N = 20 leading (official), else trailing. ``noise_seed``: start from another noise
    (one frame repeated, like the window's) drawn with that seed instead of the window's own.
    ``shuffled_audio``: driven by another clip's audio (``shuffle_audio``), a control for the sync metrics."""
    from teacher.sampler import alphas_cumprod, ddim_timesteps, sample_ddim

    spacing = "leading" if n == 20 else "trailing"
    ts, acp = ddim_timesteps(n, spacing), alphas_cumprod()

    def run(win: Window) -> torch.Tensor:
        noise = win.noise
        if noise_seed is not None:
            noise = repeated_noise(noise.shape, torch.Generator().manual_seed(noise_seed))
        audio = win.other_audio_embeds if shuffled_audio else win.audio_embeds
        if audio is None:
            raise ValueError("shuffled_audio needs windows passed through shuffle_audio")
        return sample_ddim(unet, ts, noise, win.mask_latent, win.masked_latents, win.ref_latents, audio,
                           w=w, alphas_cumprod=acp)  # fmt: skip

    return run


def student_method(
    student, n: int, w: float = OFFICIAL_W, seed: int = 0, renoise: str = "per_frame"
) -> Callable[[Window], torch.Tensor]:
    """The student (a ``StudentDenoiser``, or a loaded ``StudentUNet`` with its settings) on
    ``lcm_timesteps(n)``; ``renoise`` as in ``student.sampler.sample_lcm``."""
    from student.denoiser import as_denoiser
    from student.sampler import lcm_timesteps, sample_lcm

    denoiser = as_denoiser(student)
    ts = lcm_timesteps(n, denoiser.settings.num_ddim_timesteps, denoiser.settings.num_train_timesteps)

    def run(win: Window) -> torch.Tensor:
        g = torch.Generator(win.noise.device).manual_seed(seed)
        return sample_lcm(denoiser, ts, win.noise, win.mask_latent, win.masked_latents, win.ref_latents,
                          win.audio_embeds, w=w, generator=g, renoise=renoise)  # fmt: skip

    return run


def oracle_method(
    unet, n: int, w: float = OFFICIAL_W, seed: int = 0, renoise: str = "per_frame", num_ddim: int = 50
) -> Callable[[Window], torch.Tensor]:
    """The student's sampler with a perfect consistency function: ``student.sampler.lcm_multistep`` on
    ``lcm_timesteps(n)`` with x0(x_t, t) = the guided teacher's DDIM from t down the LCD solver's own
    ``num_ddim``-step grid (the trajectory LCD distils; at t = 999 that is teacher_ddim_50 exactly).

    What it scores is the floor of any student sampled with the same re-noising rule: re-noising
    moves x_t off the trajectory that started at the initial noise, even when every x0 is exact.
    Not a servable method (it costs more teacher steps than teacher_ddim_50); no timing.
    """
    from student.consistency import solver_timesteps
    from student.sampler import lcm_multistep, lcm_timesteps
    from teacher.sampler import alphas_cumprod, sample_ddim

    ts, acp = lcm_timesteps(n, original_steps=num_ddim), alphas_cumprod()
    grid = solver_timesteps(len(acp), num_ddim).flip(0)  # descending: 999, 979, ..., 19

    def run(win: Window) -> torch.Tensor:
        def x0_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return sample_ddim(unet, grid[grid <= t], x_t, win.mask_latent, win.masked_latents, win.ref_latents,
                               win.audio_embeds, w=w, alphas_cumprod=acp)  # fmt: skip

        g = torch.Generator().manual_seed(seed)
        return lcm_multistep(x0_fn, ts, win.noise, acp, generator=g, renoise=renoise)

    return run


def decode_paste(vae, x0: torch.Tensor, win: Window) -> torch.Tensor:
    """Latents -> pasted frames ``[F, R, R, 3]`` in [0, 1] (generated inside the mask only)."""
    from teacher.conditioning import composite

    out = composite(vae.decode(x0.float()), win.frames, win.mask)
    return ((out[0].permute(1, 2, 3, 0) + 1) / 2).cpu()


def laplacian(frames: torch.Tensor, box=MOUTH_BOX) -> torch.Tensor:
    """The 5-point Laplacian of the grey image inside ``box`` (interior pixels); frames ``[F, R, R, 3]`` in
    [0, 1] -> ``[F, h - 2, w - 2]``."""
    r = frames.shape[1]
    x0, y0, x1, y1 = (int(round(v * r)) for v in box)
    g = frames[:, y0:y1, x0:x1].mean(-1)
    return 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]


def laplacian_energy(frames: torch.Tensor, box=MOUTH_BOX) -> float:
    """Mean squared Laplacian of the grey image inside ``box``; frames ``[F, R, R, 3]`` in [0, 1]."""
    return float(laplacian(frames, box).square().mean())


def laplacian_error(frames: torch.Tensor, truth: torch.Tensor, box=MOUTH_BOX) -> float:
    """Mean squared difference of the Laplacians of ``frames`` and ``truth`` (both ``[F, R, R, 3]`` in [0, 1])
    inside ``box``: high-frequency error. Beside ``laplacian_energy`` it tells detail from noise: a flat output
    scores the truth's own energy, the truth 0, detail in the wrong places more than a flat output."""
    return float((laplacian(frames, box) - laplacian(truth, box)).square().mean())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def lse_metrics(frames: list[torch.Tensor], windows: list[Window], syncnet, sync_window) -> dict[str, float]:
    """LSE-C, LSE-D and |offset| (frames) of generated windows ``[F, R, R, 3]`` in [0, 1], per clip, then averaged.

    A clip's windows (contiguous: ``ClipDataset`` with stride F) are joined back into the clip, its audio
    likewise; faces are resized (area) to the SyncNet's resolution (``sync_window``, a
    ``distill.syncnet_data.SyncWindow``); ``losses.syncnet.window_embeddings`` + ``losses.sync.sync_scores``
    over +-15 frames, as ``turbosync eval sync`` scores a video. Raises ValueError for windows that do not
    tile their clip or carry no audio.
    """
    import torch.nn.functional as F

    from losses.mel import syncnet_mel
    from losses.sync import sync_scores
    from losses.syncnet import window_embeddings

    clips: dict[int, list[tuple[torch.Tensor, Window]]] = {}
    for f, w in zip(frames, windows, strict=True):
        clips.setdefault(w.clip, []).append((f, w))
    scores = []
    for items in clips.values():
        items.sort(key=lambda fw: fw[1].start)
        starts = [w.start for _, w in items]
        if any(w.audio is None for _, w in items) or starts != [starts[0] + i * len(items[0][0])
                                                                 for i in range(len(items))]:
            raise ValueError(f"windows of clip {items[0][1].clip} do not tile it (starts {starts}) or lack audio")
        faces = torch.cat([f for f, _ in items]).permute(0, 3, 1, 2).float() * 2 - 1   # [T, 3, R, R]
        r = sync_window.resolution
        if faces.shape[-1] != r:
            faces = F.interpolate(faces, size=(r, r), mode="area")
        mel = syncnet_mel(np.concatenate([w.audio for _, w in items]))
        v, a = window_embeddings(syncnet, faces, mel, sync_window.num_frames, 25.0, sync_window.lower_half)
        scores.append(sync_scores(v, a))
    return {"lse_c": float(np.mean([s.lse_c for s in scores])), "lse_d": float(np.mean([s.lse_d for s in scores])),
            "sync_offset_abs": float(np.mean([abs(s.offset) for s in scores]))}


def evaluate(methods: dict[str, Callable], windows: list[Window], vae, reference: str = "teacher_ddim_20",
             syncnet=None, sync_window=None) -> dict:
    """Run every method on every window; returns {method: metrics} and keeps sample frames. With a ``syncnet``
    (and its ``sync_window``) every row, the ground truth included, also gets ``lse_metrics``."""
    from distill.synthworld import LOWER_HALF_REGION, measure_mouth

    outputs: dict[str, list[torch.Tensor]] = {}
    for name, run in methods.items():
        with torch.no_grad():
            outputs[name] = [decode_paste(vae, run(w), w) for w in windows]
    truth = [((w.frames[0].permute(1, 2, 3, 0) + 1) / 2).cpu() for w in windows]
    region = [(1 - w.mask[0, 0]).bool().cpu() for w in windows]  # [F, R, R] generated region
    gt_open = np.concatenate([w.mouth_open for w in windows])
    gt_sharp = np.mean([laplacian_energy(t) for t in truth])
    results = {}
    for name, outs in outputs.items():

        def region_mse(a_list, b_list):
            return float(np.mean([((a - b).square().mean(-1))[m].mean().item()
                                  for a, b, m in zip(a_list, b_list, region)]))  # fmt: skip

        measured = np.concatenate([measure_mouth((o.numpy() * 255).round().astype(np.uint8), region=LOWER_HALF_REGION)
                                   for o in outs])  # fmt: skip
        results[name] = {
            "mse_to_teacher20": region_mse(outs, outputs[reference]) if reference in outputs else float("nan"),
            "mse_to_ground_truth": region_mse(outs, truth),
            "sync_score": pearson(measured, gt_open),
            "sharpness": float(np.mean([laplacian_energy(o) for o in outs]) / gt_sharp),
            "detail_error": float(np.mean([laplacian_error(o, t) for o, t in zip(outs, truth)]) / gt_sharp),
        }
        if syncnet is not None:
            results[name].update(lse_metrics(outs, windows, syncnet, sync_window))
    results["_ground_truth"] = {
        "sync_score": pearson(
            np.concatenate(
                [measure_mouth((t.numpy() * 255).round().astype(np.uint8), region=LOWER_HALF_REGION) for t in truth]
            ),
            gt_open,
        )
    }
    if syncnet is not None:
        results["_ground_truth"].update(lse_metrics(truth, windows, syncnet, sync_window))
    return results, outputs, truth


def average_draws(draws: list[dict]) -> dict:
    """Per-method mean of every metric over evaluations with different noise draws; the values of each
    draw are kept under ``per_draw`` and their standard deviation under ``std``."""
    out = {}
    for name, first in draws[0].items():
        if name.startswith("_"):
            out[name] = first
            continue
        vals = {m: [float(d[name][m]) for d in draws] for m in first}
        out[name] = {m: float(np.mean(v)) for m, v in vals.items()}
        if len(draws) > 1:
            out[name]["std"] = {m: float(np.std(v)) for m, v in vals.items()}
            out[name]["per_draw"] = vals
    return out


def time_method(run: Callable, vae, window: Window, repeats: int = 3) -> tuple[float, float]:
    """(U-Net ms per frame, U-Net + decode ms per frame), best of ``repeats`` after one warm-up."""
    frames = window.frames.shape[2]
    with torch.no_grad():
        run(window)
        unet_t, total_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x0 = run(window)
            t1 = time.perf_counter()
            vae.decode(x0.float())
            t2 = time.perf_counter()
            unet_t.append(t1 - t0)
            total_t.append(t2 - t0)
    return 1000 * min(unet_t) / frames, 1000 * min(total_t) / frames
