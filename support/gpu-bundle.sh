#!/usr/bin/env bash
# `./x gpu-bundle`: for a GPU machine that has its own torch but no Rust toolchain and no network.
# Builds the gpu-check example here against that torch version's libtorch (LLAMAGEN_BUNDLE_TORCH,
# default 2.11.0: headers and libraries from its wheel; tch is told to accept the version) into
# .gpu-bundle/, with the golden files it reads (from LLAMAGEN_GOLDEN, default ../shared/golden) and
# a run.sh that points the loader at the target machine's own torch; there, `.gpu-bundle/run.sh`.
# Runs from any folder; called other than through `./x gpu-bundle`, it goes through it, which sets
# up the project venv (as `./x setup`) and comes back here with it in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${LLAMAGEN_SET_UP_BY_X:-}" ]; then
    exec "$root/x" gpu-bundle
fi

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

version=${LLAMAGEN_BUNDLE_TORCH:-2.11.0}
torch_dir="target/bundle-torch-$version" bundle=.gpu-bundle
if [ ! -f "$torch_dir/torch/version.py" ]; then
    say "fetching torch $version's wheel for its libtorch"
    rm -rf "$torch_dir"
    mkdir -p "$torch_dir"
    .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$torch_dir" "torch==$version"
    unzip -q "$torch_dir"/torch-*.whl 'torch/include/*' 'torch/lib/*' torch/version.py -d "$torch_dir"
    rm "$torch_dir"/torch-*.whl
fi
# tch's C wrapper is generated for torch 2.13.0: the few operators another version lacks (or
# declares differently) become functions that raise, found by one syntax-only compile.
torch_sys=target/bundle-torch-sys
rm -rf "$torch_sys"
cp -r "$(cargo metadata --locked --format-version 1 | python -c '
import json, os, sys
packages = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in packages if p["name"] == "torch-sys"))')" "$torch_sys"
python - "$torch_sys/libtch/torch_api_generated.cpp" "$torch_dir/torch/include" <<'PY'
import re, subprocess, sys
source, include = sys.argv[1], sys.argv[2]
compiled = subprocess.run(
    ["g++", "-fsyntax-only", "-fmax-errors=0", "-w", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1",
     "-DGLOG_USE_GLOG_EXPORT", f"-I{include}", f"-I{include}/torch/csrc/api/include", source],
    capture_output=True, text=True)
failing = {int(n) for n in re.findall(r"torch_api_generated\.cpp:(\d+):\d+: error", compiled.stderr)}
lines = open(source).read().split("\n")
starts = set()
for number in failing:
    i = number - 1
    while not re.match(r"^\S.*\)\s*\{\s*$", lines[i]):
        i -= 1
    starts.add(i)
for i in sorted(starts, reverse=True):
    end = lines.index("}", i)
    name = re.search(r"(atg_\w+)\(", lines[i]).group(1)
    lines[i + 1:end] = [f'  PROTECT(throw std::runtime_error("{name}: not in this libtorch");)']
open(source, "w").write("\n".join(lines))
print(f"{len(starts)} wrapper functions of operators this libtorch lacks now raise")
PY
say "building gpu_check against torch $version"
# The patch changes Cargo.lock's source of torch-sys: the tracked lock file is put back after.
mkdir -p target/bundle
cp Cargo.lock target/bundle/Cargo.lock.tracked
trap 'cp target/bundle/Cargo.lock.tracked Cargo.lock' EXIT
env -u LIBTORCH_USE_PYTORCH LIBTORCH="$root/$torch_dir/torch" LIBTORCH_BYPASS_VERSION_CHECK=1 \
    CARGO_TARGET_DIR=target/bundle cargo build --release --example gpu_check \
    --config "patch.crates-io.torch-sys.path='$root/$torch_sys'"
cp target/bundle/Cargo.lock.tracked Cargo.lock
trap - EXIT
rm -rf "$bundle"
mkdir -p "$bundle/golden"
cp target/bundle/release/examples/gpu_check "$bundle/"
echo "$version" >"$bundle/torch-version"
golden=${LLAMAGEN_GOLDEN:-../shared/golden}
cp "$golden"/{manifest_public.json,gpt_public.pt,vq_public.pt,gpt_public_io.safetensors} "$bundle/golden/"
cp "$golden"/{gpt_public_bf16_io.safetensors,dinov2_tiny_public_pretrain.pth} "$bundle/golden/"
cp "$golden"/clip_vision_tiny_public{.safetensors,_config.json} "$bundle/golden/"
# Only the four feature-network tensors gpu_check compares (the whole file is 30 MB).
python - "$golden/feature_nets_public_io.safetensors" "$bundle/golden/feature_nets_public_io.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
keys = ["dinov2_64x64_input", "dinov2_64x64_cls", "clip_a_input", "clip_a_image_embeds"]
tensors = load_file(sys.argv[1])
save_file({k: tensors[k].contiguous() for k in keys}, sys.argv[2])
PY
cat >"$bundle/run.sh" <<'SH'
#!/usr/bin/env bash
# gpu_check on this machine's own torch (the version it was built against; LLAMAGEN_TORCH_LIB names
# another torch/lib) and the carried goldens.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lib=${LLAMAGEN_TORCH_LIB:-$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
built=$(cat "$here/torch-version")
found=$(sed -n "s/^__version__ = '\([^'+]*\).*/\1/p" "$lib/../version.py")
if [ "$found" != "$built" ]; then
    echo "this bundle was built against torch $built, but $lib is torch ${found:-of unknown version}:" >&2
    echo "rebuild it with LLAMAGEN_BUNDLE_TORCH=$found ./x gpu-bundle" >&2
    exit 2
fi
# torch's Python import loads the CUDA libraries from site-packages/nvidia/*/lib: a program
# without Python needs them on its path.
for dir in "$lib"/../../nvidia/*/lib; do
    if [ -d "$dir" ]; then lib="$lib:$(cd "$dir" && pwd)"; fi
done
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" LLAMAGEN_GOLDEN="$here/golden"
exec "$here/gpu_check" "$@"
SH
chmod +x "$bundle/run.sh"
say "$bundle: $(du -sh "$bundle" | cut -f1); on the GPU machine: $bundle/run.sh"
