"""Adaptation methods and what they share.

* source-only training (``seg_training``) and AdaBN (``adabn``), the baselines;
* Progressive Translation Learning with label-guided diffusion translation (``ptl``,
  ``translation``, ``stage_metrics``), Peng et al. (ICCV 2023);
* CICLD, the conditional, inter-coder connected latent-diffusion segmenter (``cicld``),
  Yu, Sun, Luo;
* DACS-style ClassMix + EMA-teacher self-training of a plain segmenter (``dacs``), CICLD's
  baseline without diffusion.

Import from the modules (``from diffdass.adaptation.cicld import train_cicld``).
"""
