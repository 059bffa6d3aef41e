"""The live page in a real headless Chromium (Debian's ``chromium``, driven by Playwright, no browser download).

One server (``turbosync stream --serve --mic``, the committed toy student, a closed-mouth idle avatar), two
pages with Chromium's fake microphone playing a synthetic-world utterance with a 3 s pause. Page A records
what it draws and plays; page B joins half a second later. Checked on the receiving side: 25 +- 1 frames a second on
both pages, the audio plays (and is the microphone's, located by correlation), the A/V offset by the page's
clocks and by content (mouths read from the drawn frames against the true mouth track of the audio heard)
within +-40 ms, and during the pause a closed, still mouth (no flicker between the engine's frames and the
avatar's own) with no skipped or frozen frame. Written to pass on a 2-core CI machine that cannot make
full-quality frames for two sessions (the frames are then degraded or the avatar's own, which the checks
allow); they fail on a stalled or slipped output clock, a flickering pause, a frozen picture, a lost voice.
Fails, not skips, when Chromium is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import itertools

import numpy as np

from scripts.bench_live import CONTENT_LEVELS, PageProbe, analyse, launch_chromium, make_assets, server

PAUSE = (4.0, 3.0)  # the microphone is silent from 4 s to 7 s of the 11 s loop
SECONDS = 8.0  # speech around the pause


def _brief(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def test_two_pages_stream_at_25_fps_with_the_voice_on_the_lips(tmp_path):
    from playwright.sync_api import sync_playwright

    assets = make_assets(tmp_path, SECONDS, pauses=(PAUSE,))
    sp = assets["speech"]
    loop_s = len(sp.audio) / 16000
    reference, truth = np.tile(sp.audio, 3), np.tile(sp.mouth_open, 3)  # the fake microphone loops its file
    with server("--avatar", str(assets["avatar"]), "--mic", "--sessions", "2") as (proc, url), sync_playwright() as pw:
        browser = launch_chromium(pw, assets["wav"])
        a = PageProbe(browser, url)
        a.record(True)
        a.wait(0.5)
        # The second page joins before page A hears the pause: opening a tab holds both cores of a 2-core machine
        # for up to half a second (browser and server share them here), which would land in the pause's checks.
        b = PageProbe(browser, url, capture=False)  # its log has what page B needs
        b.take()
        a.wait(loop_s + 2.5)
        a.record(False)
        data_a, data_b = a.take(), b.take()
        a.page.click("#mic")  # the microphone off and on again: the session streams on, no restart
        a.wait(1.5)
        a.page.click("#mic")
        a.wait(1.5)
        after = a.take()
        browser.close()
    ra, rb = analyse(data_a, a.frames, truth, reference), analyse(data_b, b.frames, truth, reference, skip_s=0.0)
    print("page A", _brief(ra), "\npage B", _brief(rb), "\nserver:", proc.stderr.read())
    for r, data in ((ra, data_a), (rb, data_b)):
        assert data["closed"] is None and data["state"] == "running" and data["rate"] == 16000, data
        assert r["frames_shown"] > 100 and abs(r["fps"] - 25) <= 1, _brief(r)
        assert data["energy"] > 1.0, data  # audio was played
        assert abs(r["timing"]["mean_ms"]) <= 40 and abs(r["timing"]["median_ms"]) <= 40, r["timing"]
    assert after["closed"] is None and len(after["log"]) >= 50, (after["closed"], len(after["log"]))
    assert after["stats"]["padded_s"] > data_a["stats"]["padded_s"]  # the silence while the mic was off
    heard = ra["heard_audio"]  # the voice is the mic's: each 2 s piece of it is found in the microphone's file
    assert heard["piece_correlation_median"] > 0.6 and heard["rms"] > 0.01, heard
    _check_pause(ra, a.frames)
    # Content: lips against voice from pixels and heard audio, over the frames the student made in time (through
    # the VAE, and through the tiny decoder, whose mouths read right too: bench_live.decoder_check). On a machine
    # too busy for the toy engine to make 20 in time the page shows the avatar's own frames instead (levels
    # "late" / "pass_through" / "idle"), and this part is measured by test_live.py's websocket test and bench_live.
    for name in CONTENT_LEVELS:
        if ra[f"{name}_frames"] >= 20:
            assert abs(ra[name]["offset_ms"]) <= 40 and ra[name]["correlation"] > 0.3, (name, ra[name])


ENGINE, AVATAR = ("full", "one_step", "tiny_decoder"), ("idle", "late", "pass_through")


def _check_pause(r: dict, frames: dict) -> None:
    """The microphone's 3 s pause on page A: a closed, still mouth, no flicker, no dropped or frozen stretch.

    The pause is found by the frames' own audio (the 640 samples each packet carries): a drawn frame is in it
    when its packet and those 8 frames (320 ms) either side are silent; the speech's own gaps are shorter."""
    silent = {i for i, f in frames.items() if f[3] < 1e-3}
    idx, mouth, levels, shown = r["_index"], r["_mouth"], r["_levels"], r["_shown"]
    inside = np.array([all(int(i) + d in silent for d in range(-8, 9)) for i in idx])
    assert inside.sum() >= 40, f"the window held {inside.sum()} frames of the pause"
    read = ~np.isnan(mouth)  # a drawn frame whose packet Playwright did not hand over has no mouth reading
    assert read[inside].mean() >= 0.9, f"{r['packets_missing']} packets of drawn frames missing"
    assert np.max(mouth[inside & read]) < 0.15, mouth[inside]  # closed, whoever made the frame
    # Still, no flicker: the engine's silent mouth (the toy student's reads 0 through the VAE, 0.10 +- 0.03
    # through the tiny decoder) or the avatar's own (0), never alternating. A machine that falls behind in a
    # silence switches to the avatar once and stays there (the server's idle hysteresis; the tiny decoder's
    # frames count as falling behind): at most one switch per pause, each side still.
    runs = np.split(np.flatnonzero(inside), np.flatnonzero(np.diff(np.flatnonzero(inside)) > 1) + 1)
    for run in runs:
        lv, m = levels[run], mouth[run]
        print("pause:", {str(k): int((lv == k).sum()) for k in set(lv)}, "mouth", np.nanmin(m), np.nanmax(m))
        avatar = np.isin(lv, AVATAR)
        assert set(lv) <= set(ENGINE + AVATAR), set(lv)
        switch = int(np.argmax(avatar)) if avatar.any() else len(run)
        assert avatar[switch:].all(), f"the pause flickers between sources: {list(lv)}"
        assert set(lv[switch:]) <= {"idle"}, set(lv[switch:])  # in a silence the avatar's frames are "idle"
        for part in (m[:switch], m[switch:]):
            part = part[~np.isnan(part)]
            assert len(part) < 3 or np.std(part) < 0.03, (list(lv), m)
        m = m[~np.isnan(m)]
        assert (np.abs(np.diff(m)) > 0.05).sum() <= 1, (list(lv), m)
    # The output clock: frame i leaves at t0 + latency + 40 ms i. A server starved of CPU sends the frames due
    # in a stall at its end (seen: 0.1-0.4 s at a load of 10 on 2 cores; the page's 120 ms buffer takes some);
    # a stretch dropped or held back in the pause would leave half a second of frames late or more, a slipped
    # clock would move the pause's frames against the rest.
    late_ms = 1000 * r["_sent"] - 40.0 * idx
    late_ms = late_ms - np.nanmedian(late_ms)
    assert abs(np.nanmedian(late_ms[inside])) < 20, late_ms[inside]
    late = late_ms[inside] > 100
    longest = max((sum(1 for _ in g) for k, g in itertools.groupby(late) if k), default=0)
    assert longest < 12, f"{longest} frames in a row sent over 100 ms late (up to {np.nanmax(late_ms):.0f} ms)"
    # Frozen: no three drawn frames in a row with the same picture (the avatar's ping-pong loop repeats its end
    # frames once).
    jpegs = [hash(frames[int(i)][0]) if int(i) in frames else int(i) for i in idx[inside]]
    assert max((sum(1 for _ in g) for _, g in itertools.groupby(jpegs)), default=0) <= 2
    # On the page: no stretch skipped or frozen. A page starved of CPU may correct its timeline by single frames
    # (a late packet restarts it one frame later, a catch-up moves it back): at most two such steps.
    pairs = inside[1:] & inside[:-1]  # consecutive drawn frames, both in the pause
    steps, shown_ms = np.diff(idx)[pairs], np.diff(shown)[pairs]
    assert (np.abs(steps) <= 2).all() and (steps != 1).sum() <= 2, steps[steps != 1]
    assert np.mean(shown_ms < 80) >= 0.95, shown_ms
