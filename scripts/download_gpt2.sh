#!/usr/bin/env bash
# Downloads OpenAI's GPT-2 weights and vocabulary from Hugging Face, for bin/train --init and bin/export.
#
#   scripts/download_gpt2.sh [MODEL] [DIR]
#
# MODEL (default gpt2):
#   gpt2 | gpt2-medium | gpt2-large | gpt2-xl
#       the Hugging Face repository openai-community/MODEL (124M, 355M, 774M, 1.5B parameters):
#       config.json + model.safetensors (the weights; bin/train --init DIR reads them), and the
#       vocabulary: vocab.json + merges.txt (GPT-2's byte-level BPE), tokenizer.json,
#       tokenizer_config.json, generation_config.json where the repository has them.
#       Sizes of model.safetensors: about 0.55, 1.5, 3.3 and 6.4 GB.
#   llmc
#       llm.c's GPT-2 124M files from the Hugging Face dataset karpathy/llmc-starter-pack:
#       gpt2_124M.bin (float32) and gpt2_124M_bf16.bin (bfloat16), both readable by bin/train --init.
# DIR (default models/MODEL): created if needed. Files already there are not downloaded again
# (an interrupted download resumes where it stopped).
#
# Needs curl or wget and internet access. Exit status: 0 all required files are there, 1 a download
# failed, 2 bad arguments. On failure it removes what this run created (the files it downloaded, the
# directories it made), so no empty or half-filled model directory is left for bin/train --init to
# trip over; a partly downloaded file (NAME.part) stays, with a note, so that a rerun resumes it.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

model="${1:-gpt2}"
case "$model" in
  -h|--help) usage; exit 0 ;;
  gpt2|gpt2-medium|gpt2-large|gpt2-xl)
    base="https://huggingface.co/openai-community/$model/resolve/main"
    required=(config.json model.safetensors)
    optional=(vocab.json merges.txt tokenizer.json tokenizer_config.json generation_config.json) ;;
  llmc)
    base="https://huggingface.co/datasets/karpathy/llmc-starter-pack/resolve/main"
    required=(gpt2_124M.bin)
    optional=(gpt2_124M_bf16.bin) ;;
  *) echo "download_gpt2.sh: unknown model '$model' (gpt2, gpt2-medium, gpt2-large, gpt2-xl or llmc; see --help)" >&2
     exit 2 ;;
esac
[ $# -le 2 ] || { echo "download_gpt2.sh: at most two arguments, MODEL and DIR (see --help)" >&2; exit 2; }
dir="${2:-models/$model}"

if command -v curl >/dev/null 2>&1; then
  # -f: an HTTP error is a failure, not a saved error page; -L: Hugging Face redirects to its CDN;
  # -C -: resume a partial file.
  fetch() { curl -fL --retry 3 -C - -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget --tries=3 -c -O "$2" "$1"; }
else
  echo "download_gpt2.sh: needs curl or wget" >&2
  exit 1
fi

# What this run creates, so that a failure can take back exactly that and nothing the user had before.
made_dirs=()   # directories mkdir made, outermost first
made_files=()  # files downloaded whole by this run
parts=()       # NAME.part files this run started
d="$dir"
while [ ! -e "$d" ]; do made_dirs=("$d" "${made_dirs[@]}"); d=$(dirname "$d"); done
mkdir -p "$dir"

cleanup() {
  local rc=$?
  [ "$rc" -eq 0 ] && return
  local f i
  for f in "${made_files[@]}"; do rm -f "$f"; done
  for f in "${parts[@]}"; do
    if [ -s "$f" ]; then
      echo "download_gpt2.sh: kept the partial download $f ($(wc -c < "$f") bytes): run again to resume it, or remove it" >&2
    else
      rm -f "$f"
    fi
  done
  # Innermost first; rmdir leaves a directory that still holds something (a kept .part, a user's file).
  for ((i = ${#made_dirs[@]} - 1; i >= 0; i--)); do rmdir "${made_dirs[i]}" 2>/dev/null || break; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Downloads into NAME.part and renames when complete, so a file under its final name is always whole.
get() {
  local name="$1" dest="$dir/$1"
  if [ -s "$dest" ]; then echo "have $dest"; return 0; fi
  echo "downloading $base/$name"
  [ -e "$dest.part" ] || parts+=("$dest.part")
  if fetch "$base/$name" "$dest.part"; then
    mv "$dest.part" "$dest"
    made_files+=("$dest")
  else
    return 1
  fi
}

for f in "${required[@]}"; do
  get "$f" || { echo "download_gpt2.sh: failed to download $base/$f" >&2; exit 1; }
done
for f in "${optional[@]}"; do
  # A missing optional file (HTTP 404) leaves an empty or partial .part behind: remove it.
  get "$f" || { rm -f "$dir/$f.part"; echo "note: $base/$f not downloaded (optional)"; }
done

echo "done: $dir"
if [ "$model" = llmc ]; then
  echo "use it with: ./bin/train --init $dir/gpt2_124M.bin ...   or   ./bin/export $dir/gpt2_124M.bin --hf DIR"
else
  echo "use it with: ./bin/train --init $dir ...   or   ./bin/export $dir --llmc FILE"
fi
