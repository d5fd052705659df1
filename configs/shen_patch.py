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
easier lesions (difficulty 0.1), patches resized to 32x32, Adam 1e-3 with time-based decay 1e-2
for 400 steps of 32, no augmentation (config_lib/shen.py says why). Measured with
tests/mammo_jax/test_shen_patch.py's slow test (the same config, a cold data cache, nice 19,
load average 2-4 on 2 CPU cores): test balanced accuracy 0.321 (patient-bootstrap 95 %
interval 0.259-0.387), macro AUC 0.670 (0.621-0.720), accuracy 0.317 (chance: 0.2 balanced
accuracy, 0.5 AUC; 1550 test patches of 40 patients); per-class AUC 0.61-0.66 for the
calcifications and benign masses, 0.71 background, 0.73 malignant masses. 8.2 minutes of CPU
time in all (the synthetic data and s10_224 build about 1.1 of them), 9 minutes wall.
The earlier settings (a constant 1e-3, 300 steps) gave 0.278 (0.244-0.311) and 0.662; 48x48
patches with them 0.280 and 0.619 at 2.5 times the CPU time. Above chance, short of the 0.75
macro AUC aimed at. vgg16,demo has not been measured with these settings.

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
