"""The live page in a real headless Chromium (Debian's ``chromium``, driven by Playwright, no browser download).

One server (``turbosync stream --serve --mic``, the committed toy student, a closed-mouth idle avatar), two
pages with Chromium's fake microphone playing a synthetic-world utterance with a 3 s pause. Page A records
what it draws and plays; page B joins 2 s later. Checked on the receiving side: 25 +- 1 frames a second on
both pages, the audio plays (and is the microphone's, located by correlation), the A/V offset by the page's
clocks and by content (mouths read from the drawn frames against the true mouth track of the audio heard)
within +-40 ms, and during the pause a closed, still mouth with no skipped or frozen frame. Fails, not
skips, when Chromium is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import time

import numpy as np

from scripts.bench_live import PageProbe, analyse, launch_chromium, make_assets, server

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
        a = PageProbe(browser, url)  # alone for 5 s (the sync measurement), then with a second page
        a.record(True)
        time.sleep(5.0)
        b = PageProbe(browser, url)
        b.take()
        time.sleep(loop_s - 2.0)
        a.record(False)
        data_a, data_b = a.take(), b.take()
        a.page.click("#mic")  # the microphone off and on again: the session streams on, no restart
        time.sleep(1.5)
        a.page.click("#mic")
        time.sleep(1.5)
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
    heard = ra["heard_audio"]
    assert heard["correlation_with_microphone"] > 0.3 and heard["rms"] > 0.01, heard  # the voice is the mic's
    # The pause: every frame drawn while its audio is in the middle of the silence has a closed, still mouth,
    # and the frames keep coming every 40 ms, each index once (no dropped or frozen stretch).
    shown, mouth, start = ra["_shown"], ra["_mouth"], ra["_ref_start"]
    t = ((shown - start) / 1000.0) % loop_s  # position in the microphone's loop (s) of each drawn frame's audio
    inside = (t > PAUSE[0] + 0.3) & (t < PAUSE[0] + PAUSE[1] - 0.3)
    assert inside.sum() >= 40, f"the window held {inside.sum()} frames of the pause"
    assert np.nanmax(mouth[inside]) < 0.15, mouth[inside]  # closed, whoever made the frame
    # Still, per source: on a CPU-starved machine (2 cores, two sessions) the page alternates between the engine's
    # frames (the toy student's silent mouth reads about 0.1) and the idle avatar's (0), a visible flicker that
    # the notes count as open; each source on its own must hold still.
    levels = ra["_levels"][inside]
    for level in set(levels):
        same = mouth[inside][levels == level]
        same = same[~np.isnan(same)]  # a frame drawn before the probe kept its payload ("missing") has no reading
        assert len(same) < 5 or np.nanstd(same) < 0.05, (level, same)
    pairs = inside[1:] & inside[:-1]  # consecutive drawn frames, both in a pause
    steps = np.diff(ra["_index"])[pairs]
    # The output clock: frame i leaves at t0 + latency + 40 ms i (send jitter of a busy event loop aside).
    late_ms = 1000 * ra["_sent"][inside] - 40.0 * ra["_index"][inside]
    assert np.nanmax(late_ms) - np.nanmin(late_ms) < 150, late_ms - np.nanmin(late_ms)
    # On the page: no stretch skipped or frozen. A page starved of CPU may correct its timeline by single frames
    # (a late packet restarts it one frame later, a catch-up moves it back): at most two such steps.
    shown_ms = np.diff(shown)[pairs]
    assert (np.abs(steps) <= 2).all() and (steps != 1).sum() <= 2, steps[steps != 1]
    assert np.mean(shown_ms < 80) >= 0.95, shown_ms
    # Content: lips against voice from pixels and heard audio, over the frames the engine made in time. On a
    # machine too busy for the toy engine to make any in time the page shows the idle avatar instead (levels
    # "late" / "pass_through"), and this part is measured by test_live.py's websocket test and bench_live.
    if ra["generated_frames"] >= 20:
        assert abs(ra["content"]["offset_ms"]) <= 40 and ra["content"]["correlation"] > 0.3, ra["content"]
