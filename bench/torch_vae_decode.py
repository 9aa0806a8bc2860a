"""PyTorch's own decode of an SD-family KL VAE decoder, the anchor for the WebGPU measurement.

The LDM `Decoder` (post_quant_conv, conv_in, mid block of two resnets around one attention, up
levels of num_res_blocks + 1 resnets with nearest-2x upsampling and a conv, GroupNorm(32, eps
1e-6), SiLU), written out in plain torch because the device image has torch but not diffusers.
Loads LDM-layout safetensors (what scripts/make-seeded-vae.ts writes, the fixture's
ldm.safetensors), checks itself against the fixture's reference.npy when asked, and times decode
at the given batches in fp32 and fp16 with CUDA events.

  python3 bench/torch_vae_decode.py WEIGHTS.safetensors --side 64 --batches 1,4,8,16 [--check DIR] [--out FILE.json]
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def group_norm(x, p, name):
    return F.group_norm(x, 32, p[name + ".weight"], p[name + ".bias"], eps=1e-6)


def conv(x, p, name, pad):
    return F.conv2d(x, p[name + ".weight"], p[name + ".bias"], padding=pad)


def resnet(x, p, name):
    h = conv(F.silu(group_norm(x, p, name + ".norm1")), p, name + ".conv1", 1)
    h = conv(F.silu(group_norm(h, p, name + ".norm2")), p, name + ".conv2", 1)
    if name + ".nin_shortcut.weight" in p:
        x = conv(x, p, name + ".nin_shortcut", 0)
    return x + h


def attention(x, p, name):
    n, c, hh, ww = x.shape
    h = group_norm(x, p, name + ".norm")
    q, k, v = (conv(h, p, f"{name}.{t}", 0).reshape(n, c, hh * ww).transpose(1, 2) for t in "qkv")
    o = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
    return x + conv(o.transpose(1, 2).reshape(n, c, hh, ww), p, name + ".proj_out", 0)


def decode(z, p):
    if "post_quant_conv.weight" in p:
        z = conv(z, p, "post_quant_conv", 0)
    h = conv(z, p, "decoder.conv_in", 1)
    h = resnet(h, p, "decoder.mid.block_1")
    h = attention(h, p, "decoder.mid.attn_1")
    h = resnet(h, p, "decoder.mid.block_2")
    levels = 1 + max(int(k.split(".")[2]) for k in p if k.startswith("decoder.up."))
    blocks = 1 + max(int(k.split(".")[4]) for k in p if k.startswith("decoder.up.0.block."))
    for i in reversed(range(levels)):
        for j in range(blocks):
            h = resnet(h, p, f"decoder.up.{i}.block.{j}")
        if f"decoder.up.{i}.upsample.conv.weight" in p:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), p, f"decoder.up.{i}.upsample.conv", 1)
    return conv(F.silu(group_norm(h, p, "decoder.norm_out")), p, "decoder.conv_out", 1)


def load(path, dtype):
    raw = load_file(path)
    prefix = next(pre for pre in ("first_stage_model.", "vae.", "") if pre + "decoder.conv_in.weight" in raw)
    return {k[len(prefix):]: v.to("cuda", dtype) for k, v in raw.items() if k.startswith(prefix) and (k[len(prefix):].startswith("decoder.") or k[len(prefix):].startswith("post_quant_conv."))}


@torch.inference_mode()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--check", help="fixture folder with latents.npy and reference.npy")
    ap.add_argument("--out")
    a = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "weights": a.weights, "side": a.side, "points": []}
    if a.check:
        p = load(a.weights, torch.float32)
        lat = torch.from_numpy(np.load(f"{a.check}/latents.npy")).cuda()
        ref = np.load(f"{a.check}/reference.npy")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        result["check_max_abs_fp32"] = float(np.abs(decode(lat, p).float().cpu().numpy() - ref).max())
        print("fixture check, max |torch - reference|:", result["check_max_abs_fp32"], flush=True)
    for dtype in (torch.float32, torch.float16):
        p = load(a.weights, dtype)
        for b in (int(x) for x in a.batches.split(",")):
            z = torch.randn(b, 4, a.side, a.side, device="cuda", dtype=dtype)
            t0 = time.perf_counter()
            decode(z, p)
            torch.cuda.synchronize()
            first_ms = (time.perf_counter() - t0) * 1000
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            iters, total = 0, 0.0
            while total < a.seconds * 1000 and iters < 500:
                start.record()
                decode(z, p)
                end.record()
                end.synchronize()
                total += start.elapsed_time(end)
                iters += 1
            ms = total / iters
            pt = {"dtype": str(dtype).split(".")[1], "batch": b, "ms_per_batch": ms, "images_per_s": b * 1000 / ms, "first_run_ms": first_ms, "iters": iters}
            result["points"].append(pt)
            print(json.dumps(pt), flush=True)
        del p
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
