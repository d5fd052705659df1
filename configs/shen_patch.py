"""Shen et al.'s S10 five-class patch classifier (Shen et al. 2019; docs/SHEN_2019.md).

  python -m mammo_jax.main --config=configs/shen_patch.py:resnet50 --workdir=runs/shen_resnet50 \
      --config.data.manual_dir=/data/CBIS-DDSM
  python -m mammo_jax.main --config=configs/shen_patch.py:vgg16 --workdir=runs/shen_vgg16 ...
  python -m mammo_jax.main --config=configs/shen_patch.py:resnet50,demo --workdir=/tmp/shen_demo
The argument is the backbone (`resnet50` or `vgg16`), optionally with `,demo` or `,smoke` (the
tiny test size). The run is a pipeline of three stages in WORKDIR/{head,top,all}, each from the
previous stage's best checkpoint with a fresh Adam; config_lib/shen.py has the details.

Demo (synthetic data, no ImageNet weights): one stage, WORKDIR/all, training every layer of
the randomly initialised backbone, BatchNorm in training mode, on 160 synthetic patients with
easier lesions (difficulty 0.1), patches resized to 32x32 and standardised one by one
(model.preprocess='standardize', not Shen's), no dropout, and for ResNet50 zero-initialised
residual branches and BatchNorm momentum 0.9; Adam 1e-3 with time-based decay 1e-2 for 400
steps of 32, no augmentation (config_lib/shen.py says why, with each change's effect).
Measured with tests/mammo_jax/test_shen_patch.py's slow test (the same config, a cold data
cache, nice 19, an otherwise idle machine with 2 CPU cores, 2026-11-26): test balanced accuracy
0.351 (patient-bootstrap 95 % interval 0.307-0.400), macro AUC 0.765 (0.734-0.802), accuracy
0.434 (chance: 0.2 balanced accuracy, 0.5 AUC; 1550 test patches of 40 patients); per-class
AUC 0.71-0.72 for the calcifications and benign masses, 0.83 background, 0.84 malignant
masses. 8.1 minutes of CPU time in all (the synthetic data and s10_224 build about 1.1 of
them), 4.8 minutes wall. The first settings (Shen's preprocessing, dropout 0.5, Keras's
BatchNorm) gave 0.321 (0.259-0.387) and 0.670. Its runs cannot be given to predict: a
convolutional pass over a whole image cannot standardise each window on its own.
vgg16,demo has not been measured with these settings.

Data: cbis_ddsm/s10_224 (224x224 patches of images resized to 1152x896: 10 per abnormality
at >= 0.9 overlap and 10 background patches per image; five labels, BACKGROUND first), task
five_class, softmax cross-entropy. Needs ImageNet weights ported into weights/ (README).

From Shen et al.'s code: GAP -> dropout 0.5 -> Dense(5) head; stages head / top block (ResNet50
res5c, VGG16 block 5) / all; preprocessing x 255/65535 minus the scalar mean 52.18 (grey in 3
channels, no ImageNet means); per-batch class balancing (each example weighted by 1 / its
class's share of the batch, validation unweighted); flips, rotation +-25 deg, shear +-0.2 rad,
independent zoom 0.8-1.2, 'nearest' fill; early stopping on the validation loss (patience 5,
the value of their 3-class script).

Unverified (the paper's body could not be checked; these are its recalled 5-class S10 values):
Adam, batch 32, learning rates 1e-3 / 1e-4 / 1e-5 and about 3 / 10 / 37 epochs per stage.
Their public 3-class script instead used Nadam 1e-2 / 1e-4 / 1e-6 for 1 / 5 / 15 epochs.

Differences from Shen's code, chosen here: the best checkpoint is the one with the lowest
validation loss (theirs: the highest validation accuracy); no L2 (theirs: 0.01 on the head's
kernel only; config.l2 here would reach every kernel); no random channel shift (Shen's +-20
per channel, which mammo_jax.augment does not implement); frozen BatchNorm layers run in
inference mode. Shen et al. report 0.89 (ResNet50) and 0.84 (VGG16) five-class test accuracy
on their own patient split of CBIS-DDSM, not the official one; no published numbers are set.
"""

from mammo_jax.config_lib import shen


def get_config(arg: str | None = None):
  return shen.get_config(arg, 'configs/shen_patch.py')
