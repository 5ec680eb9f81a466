#!/usr/bin/env bash
# Decoding speed of xform's ONNX export in onnxruntime (CPU) against PyTorch eager (the Clinic fork's
# generate.py --cpu, torch 2.11) on the same machine, data and thread count, in one run:
#  - the three fixture models (tiny, 3+3 layers d 32) on the fixture test set;
#  - a 6+6-layer transformer_wmt_en_de model (d 512, 32k shared vocabulary, random weights, so every
#    hypothesis runs to --max-len-b) on 64 synthetic sentences.
#   CLINIC_SRC=.ref/clinic XFORM=.device/xform THREADS=8 tools/reference/bench_onnx_vs_torch.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CL=$(SRC=$CLINIC_SRC "$HERE/clinic_setup.sh") || exit 1
XF=$(cd "$(dirname "$XFORM")" && pwd)/$(basename "$XFORM")
export PYTHONPATH=$CL TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 OMP_NUM_THREADS=${THREADS:-8}
T=${THREADS:-8}
W=$(mktemp -d)
echo "machine: $(nproc) cores; threads $T; torch $(python3 -c 'import torch;print(torch.__version__)'); onnxruntime $(python3 -c 'import onnxruntime;print(onnxruntime.__version__)')"
torch_gen() { # data-bin ckpt beam batch maxlenb cwd
	(cd "$6" && python3 "$CL/fairseq_cli/generate.py" "$1" --path "$2" --user-dir "$CL/../radam_fairseq" --gen-subset test \
		--batch-size "$4" --beam "$3" --max-len-b "$5" --cpu --quiet 2>&1 | grep '^| Translated')
}
for run in ${RUNS-a_admin b_postln c_preln}; do
	d=$W/$run && mkdir -p "$d" && cp "$REPO/fixtures/clinic/runs/$run/ckpt/checkpoint_last.pt" "$d/"
	[ -f "$REPO/fixtures/clinic/runs/$run/profile.ratio.init" ] && cp "$REPO/fixtures/clinic/runs/$run/profile.ratio.init" "$d/"
	"$XF" export --onnx "$d/checkpoint_last.pt" -o "$d/onnx" --force >/dev/null 2>&1 || { echo "export failed for $run"; continue; }
	echo "== $run (fixture test set, 100 sentences, batch 128)"
	for beam in 4 1; do echo "PyTorch eager beam $beam: $(torch_gen "$REPO/fixtures/clinic/data-bin" checkpoint_last.pt $beam 128 200 "$d")"; done
	python3 "$REPO/tools/onnx/bench_onnx.py" "$d/onnx" --data-bin "$REPO/fixtures/clinic/data-bin" --threads "$T" --batch-sizes 128 --repeat 3
done
# The larger model.
B=$W/big && mkdir -p "$B"
python3 - "$B" "$REPO/fixtures/clinic/runs/b_postln/ckpt/checkpoint_last.pt" <<'PY'
import argparse, collections, random, sys, types, torch
B = sys.argv[1]
V, d, F, L = 32008, 512, 2048, 6
torch.manual_seed(0)
sd = collections.OrderedDict()
def lin(k, o, i): sd[k + ".weight"] = torch.randn(o, i) * (1 / i) ** 0.5; sd[k + ".bias"] = torch.zeros(o)
def ln(k): sd[k + ".weight"] = torch.ones(d); sd[k + ".bias"] = torch.zeros(d)
sd["encoder.version"] = torch.tensor([3.0]); sd["encoder.embed_tokens.weight"] = torch.randn(V, d) * d ** -0.5
sd["encoder.embed_positions._float_tensor"] = torch.zeros(1)
for side in ("encoder", "decoder"):
    if side == "decoder":
        sd["decoder.version"] = torch.tensor([3.0]); sd["decoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"]
        sd["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    for l in range(L):
        p = f"{side}.layers.{l}."
        for a in (["self_attn"] if side == "encoder" else ["self_attn", "encoder_attn"]):
            sd[p + a + ".in_proj_weight"] = torch.randn(3 * d, d) * d ** -0.5; sd[p + a + ".in_proj_bias"] = torch.zeros(3 * d)
            lin(p + a + ".out_proj", d, d)
        lin(p + "fc1", F, d); lin(p + "fc2", d, F)
        for n in (["self_attn_layer_norm", "final_layer_norm"] if side == "encoder" else ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"]):
            ln(p + n)
base = vars(torch.load(sys.argv[2], map_location="cpu", weights_only=False)["args"])  # the fork's full args
a = argparse.Namespace(**{**base, **dict(arch="transformer_wmt_en_de", task="translation", source_lang="src", target_lang="tgt",
    encoder_embed_dim=d, decoder_embed_dim=d, encoder_ffn_embed_dim=F, decoder_ffn_embed_dim=F, encoder_layers=L, decoder_layers=L,
    encoder_attention_heads=8, decoder_attention_heads=8, share_all_embeddings=True, share_decoder_input_output_embed=True,
    init_type="default", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, relu_dropout=0.0, activation_fn="relu",
    encoder_normalize_before=False, decoder_normalize_before=False, encoder_learned_pos=False, decoder_learned_pos=False,
    max_source_positions=1024, max_target_positions=1024, left_pad_source="True", left_pad_target="False",
    no_token_positional_embeddings=False, adaptive_softmax_cutoff=None, decoder_output_dim=d, decoder_input_dim=d,
    data=B + "/data-bin", dataset_impl=None, upsample_primary=1, raw_text=False, lazy_load=False)})
torch.save({"args": a, "model": sd, "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
    "optimizer_name": "FairseqRAdam", "lr_scheduler_state": {"best": None}, "num_updates": 0}],
    "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "val_loss": None}}, B + "/checkpoint.pt")
with open(B + "/dict.txt", "w") as f:
    for i in range(V - 4): f.write("w%d 1\n" % i)
rng = random.Random(1)
for lang in ("src", "tgt"):
    with open(B + "/test." + lang, "w") as f:
        for _ in range(64): f.write(" ".join("w%d" % rng.randrange(V - 4) for _ in range(rng.randint(20, 30))) + "\n")
PY
"$XF" preprocess --source-lang src --target-lang tgt --testpref "$B/test" --srcdict "$B/dict.txt" --tgtdict "$B/dict.txt" \
	--destdir "$B/data-bin" --padding-factor 1 >/dev/null 2>&1 || echo "preprocess failed"
[ -n "${SKIP_ORT:-}" ] || "$XF" export --onnx "$B/checkpoint.pt" -o "$B/onnx" --force >/dev/null 2>&1 || echo "export failed (big)"
echo "== random 6+6 d512 V32008 (64 sentences, --max-len-b 20, batch 32)"
for beam in 4 1; do echo "PyTorch eager beam $beam: $(torch_gen "$B/data-bin" "$B/checkpoint.pt" $beam 32 20 "$B")"; done
[ -n "${SKIP_ORT:-}" ] || python3 "$REPO/tools/onnx/bench_onnx.py" "$B/onnx" --data-bin "$B/data-bin" --threads "$T" --batch-sizes 32 --repeat 2 --max-len-b 20
echo "== xform generate (Go CPU backend), same model"
for beam in 4 1; do echo "xform beam $beam: $(GOMAXPROCS=$T "$XF" generate "$B/data-bin" --path "$B/checkpoint.pt" --beam $beam --batch-size 32 --max-len-b 20 --device cpu --quiet 2>&1 | grep '^| Translated')"; done
