#!/usr/bin/env bash
# Table 1 of the paper (zero-shot MME + seven sets, results/paper/table1.csv): train, evaluate, aggregate.
#
#   bash scripts/table1.sh OUT [train overrides ...] [-- eval overrides ...]
#
# Rows (configs/experiment/<row>.yaml, each header names the paper's numbers and the launch command):
#   t1_lora_r{2,4,8,16,32}             LoRA, alpha = 2r
#   t1_mixlora_e{16,32}_r{2,4,8}       MixLoRA as released (AdapterConfig.released: the published numbers)
#   t1c_mixlora_e{16,32}_r{2,4,8}      the corrected MixLoRA, same E, r and alpha = 2E
# Not trained here: LLaVA_Align (`python eval.py run=null model=llava_v1_vicuna7b ...`) and LLaVA_FT.
#
# On a cluster node with 4 GPUs (the paper: about 20 h per MixLoRA E16/r4 run on 4x A100):
#   bash scripts/table1.sh runs/paper model.paths.llm=/ckpt/vicuna-7b-v1.3 \
#     model.paths.vision=/ckpt/clip-vit-large-patch14 model.paths.projector=/ckpt/llava-v1-pretrain/mm_projector.bin \
#     data.image_folder=/data/images_191task_1k -- task.mme.path=/data/mme task.pope.path=...
# On the CPU, the same rows on the tiny stack (a smoke run, not the paper's numbers):
#   RESULTS=runs/t1/results bash scripts/table1.sh runs/t1 model=tiny data=synthetic trainer=single \
#     trainer.max_steps=1 -- limit=2
# Only some rows, or just the commands:  ROWS='t1_lora_r4 t1_mixlora_e16_r4' ...   DRY_RUN=1 ...
# Options and environment (NPROC, ROWS, DRY_RUN, KEEP_GOING, RESULTS, EVAL_DEVICE, PY): scripts/table_lib.sh,
# docs/reproduce.md.
source "$(dirname "$0")/table_lib.sh"
TABLE=table1
ROW_LIST=(t1_lora_r2 t1_lora_r4 t1_lora_r8 t1_lora_r16 t1_lora_r32
          t1_mixlora_e16_r2 t1_mixlora_e32_r2 t1_mixlora_e16_r4 t1_mixlora_e32_r4 t1_mixlora_e16_r8 t1_mixlora_e32_r8
          t1c_mixlora_e16_r2 t1c_mixlora_e32_r2 t1c_mixlora_e16_r4 t1c_mixlora_e32_r4 t1c_mixlora_e16_r8
          t1c_mixlora_e32_r8)
table_main "$@"
