#!/usr/bin/env bash
# Multi-GPU / multi-node runs go through `accelerate launch`; every verb that trains or
# tokenizes is multi-process ready. Examples (edit the paths; not run by CI):
set -euo pipefail

# 8 GPUs on one machine, bf16, tokenizer at 256 px on an image folder
accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 -m vqgpt \
  train-tokenizer --data /data/imagenet/train --out runs/in256/tokenizer --preset base \
  --set train.mixed_precision=bf16

# Tokenize with every GPU encoding its own share; one dataset comes out
accelerate launch --multi_gpu --num_processes 8 -m vqgpt \
  tokenize --tokenizer runs/in256/tokenizer --data /data/imagenet/train --out runs/in256/tokens --flip --crops 4 --num-workers 8

# Two nodes × 8 GPUs for the prior (run on each node with its --machine_rank)
accelerate launch --num_machines 2 --machine_rank "${RANK:-0}" --main_process_ip "${MASTER_ADDR:-10.0.0.1}" \
  --main_process_port 29500 --num_processes 16 --multi_gpu -m vqgpt \
  train-prior --tokens runs/in256/tokens --out runs/in256/prior --preset base --set train.mixed_precision=bf16
