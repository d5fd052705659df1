"""Shen et al.'s whole-mammogram classifier on an S10 patch classifier (docs/SHEN_2019.md §4).

First the S10 patch classifier (configs/shen_patch.py), then the whole-image model on its
backbone, at 1152x896, in two stages WORKDIR/{top,all}:
  python -m mammo_jax.main --config=configs/shen_patch.py:resnet50 --workdir=runs/shen_resnet50 \
      --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/whole.py:resnet50 --workdir=runs/whole_resnet50 \
      --config.data.manual_dir=/data/CBIS-DDSM
  (another patch run: --config.stages.top.init_from=PATCH_WORKDIR/all)
  python -m mammo_jax.main --config=configs/whole.py:demo --workdir=runs/demo_whole  # demo-whole,
      # its patch classifier included (WORKDIR/{patch,top,all})
Variants: `resnet50` (ResNet50 + [512-512-1024]x2: two residual blocks of two bottleneck units,
the first of each with stride 2 and a projection shortcut), `vgg16` (VGG16 + 512x1: two blocks
of one conv3x3-BN-ReLU and a 2x2 max-pool; the block count is inferred), `demo` (Shen's
recipe at CPU scale on the synthetic CBIS-DDSM at difficulty 0.25: stage `patch` trains the S10
patch classifier `small` on 56x56 patches, the 288x224 images' pixel scale, then `top` and
`all` train `whole_small` on its backbone; minutes on 2 CPU cores; README "Whole mammograms"
has its numbers), each optionally with `,smoke` (the tiny test size, synthetic data, random
weights); `smoke` alone is the demo at that size, its patch stage included.

From Shen's code: the top's units (he_normal kernels, BatchNorm, ReLU), global average pooling
and Dense(2) softmax; stage 1 trains the new layers only, stage 2 everything; the best
checkpoint is the highest validation AUC; per-batch class balancing and the S10 augmentation
(flips, rotation +-25 deg, shear +-0.2 rad, zoom 0.8-1.2); inputs x 255/65535 minus 52.18.
Unverified (recalled from the paper): Adam, batch 2, 1e-4 (top) then 1e-5 (all), about 50
epochs in all (split 10 + 40 here); patience 10 (their INbreast script's, on the validation
loss there; here on the validation AUC). Chosen here: dropout 0 (their code's default; the
script's value was not read), no L2 (theirs on the new layers' kernels; config.l2 would reach
the backbone too), one horizontal flip for test-time augmentation (theirs: four flips).

Memory: a 1152x896 ResNet50 batch is large; a bigger global batch fits one GPU in
micro-batches (--config.batch_size=16 --config.grad_accum_steps=8; mammo_jax.accumulation).
Published (their own patient split, not the official one): per-image AUC 0.86 (ResNet50) and
0.83 (VGG16) for one model, 0.88 and 0.86 with flip TTA; README "Whole mammograms".
"""

from mammo_jax.config_lib import whole


def get_config(arg: str | None = None):
  return whole.get_config(arg, 'configs/whole.py')
