#!/usr/bin/env python3
"""Renders a `coordinator report` folder's index.html in headless Chromium and checks that every
figure is drawn: each <img> loaded (the browser parsed its SVG) and, on a screenshot of the whole
page, enough non-background pixels of several colours inside each figure's box.

    python3 cluster/check-report.py REPORT_DIR [--screenshot OUT.png] [--min-ink 0.02]

Needs `chromium` (Debian package `chromium`) on the PATH; exits 3 with a message when it is absent,
1 when a figure is missing or blank, 0 otherwise. Prints one line per figure: its box, whether it
loaded, the share of non-white pixels and the number of distinct colours. The page is measured by
a copy of index.html with a script added (the report itself has none)."""
import argparse, os, re, shutil, struct, subprocess, sys, tempfile, zlib

PROBE = """<script>
window.addEventListener('load', () => {
  for (const img of document.querySelectorAll('figure img')) {
    const r = img.getBoundingClientRect();
    img.setAttribute('data-box', [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(','));
    img.setAttribute('data-loaded', img.complete && img.naturalWidth > 0 ? '1' : '0');
  }
  document.body.setAttribute('data-height', Math.ceil(document.documentElement.scrollHeight));
  document.body.setAttribute('data-rows', document.querySelectorAll('table tbody tr').length);
});
</script>
"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run_chromium(exe, profile, args, timeout=120):
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
            "--no-first-run", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
            "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=timeout)


def decode_png(path):
    """8-bit RGB or RGBA, non-interlaced (what Chromium writes) -> (width, height, rows of bytes, bpp)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, f"PNG form {depth}/{ctype}/{interlace}"
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, rows, bpp


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir")
    ap.add_argument("--screenshot", help="where to keep the screenshot (default: a temporary file)")
    ap.add_argument("--min-ink", type=float, default=0.02, help="least share of non-white pixels per figure")
    ap.add_argument("--width", type=int, default=1280)
    a = ap.parse_args()
    exe = chromium()
    if not exe:
        print("check-report: chromium is not installed (Debian: apt-get install chromium); nothing checked",
              file=sys.stderr)
        return 3
    src = os.path.join(a.report_dir, "index.html")
    if not os.path.exists(src):
        print(f"check-report: no index.html in {a.report_dir}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        page_dir = os.path.join(tmp, "report")
        shutil.copytree(a.report_dir, page_dir)
        html = open(src, encoding="utf-8").read().replace("</body>", PROBE + "</body>")
        page = os.path.join(page_dir, "check.html")
        open(page, "w", encoding="utf-8").write(html)
        url = "file://" + page
        dom = run_chromium(exe, os.path.join(tmp, "profile"), [f"--window-size={a.width},900", "--dump-dom", url])
        body = re.search(r'<body[^>]*data-height="(\d+)"[^>]*>', dom.stdout)
        if not body:
            print("check-report: chromium produced no measured page:\n" + dom.stderr[-2000:], file=sys.stderr)
            return 1
        height = int(body.group(1))
        rows = int(re.search(r'data-rows="(\d+)"', body.group(0)).group(1))
        figures = []
        for m in re.finditer(r"<img\b[^>]*>", dom.stdout):
            tag = m.group(0)
            src_ = re.search(r'src="([^"]+)"', tag).group(1)
            box = [int(v) for v in re.search(r'data-box="([^"]+)"', tag).group(1).split(",")]
            loaded = re.search(r'data-loaded="(\d)"', tag).group(1) == "1"
            figures.append((src_, box, loaded))
        shot = a.screenshot or os.path.join(tmp, "page.png")
        r = run_chromium(exe, os.path.join(tmp, "profile"),
                         [f"--window-size={a.width},{height}", f"--screenshot={os.path.abspath(shot)}", url])
        if not os.path.exists(shot):
            print("check-report: no screenshot:\n" + r.stderr[-2000:], file=sys.stderr)
            return 1
        w, h, px, bpp = decode_png(shot)
        print(f"page {w}x{h} px, {rows} table rows, {len(figures)} figures (screenshot {shot})")
        ok = rows > 0 and len(figures) > 0
        for src_, (x, y, bw, bh), loaded in figures:
            ink, colours, total = 0, set(), 0
            for yy in range(max(0, y), min(h, y + bh)):
                line = px[yy]
                for xx in range(max(0, x), min(w, x + bw)):
                    p = xx * bpp
                    rgb = (line[p], line[p + 1], line[p + 2])
                    total += 1
                    if min(rgb) < 235:
                        ink += 1
                        colours.add((rgb[0] >> 4, rgb[1] >> 4, rgb[2] >> 4))
            share = ink / total if total else 0
            good = loaded and total > 0 and share >= a.min_ink and len(colours) >= 3
            ok &= good
            print(f"  {'ok  ' if good else 'FAIL'} {src_}: box {x},{y} {bw}x{bh}, loaded {loaded}, "
                  f"ink {share:.1%}, {len(colours)} colours")
        if rows == 0:
            print("  FAIL: the page has no table rows")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
