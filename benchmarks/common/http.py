"""Waiting for a server the benchmark started."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aiohttp


async def wait_until_up(
    url: str,
    *,
    timeout_s: float = 60.0,
    ok: int = 500,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until GET ``url`` answers with a status below ``ok`` (exits if ``process`` dies)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise SystemExit(f"the server behind {url} exited ({process.returncode})")
            try:
                async with session.get(url) as response:
                    if response.status < ok:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout_s:g}s")
