"""Pyro model/guide pairs, one file per family."""

from probgen.models.aae import AAE
from probgen.models.aging import CAAE, AgeCGAN, RecurrentAger
from probgen.models.autoencoder import Autoencoder
from probgen.models.cvae import CVAE, Baseline
from probgen.models.flow import FlowModel
from probgen.models.flowgan import FlowGAN
from probgen.models.gan import GAN
from probgen.models.likelihoods import LIKELIHOODS
from probgen.models.mevae import MEVAE
from probgen.models.registry import MODELS, rebuildable
from probgen.models.semi_supervised_aae import SemiSupervisedAAE
from probgen.models.vae import PRESETS, VAE

rebuildable(Baseline)  # a plain network, rebuilt with the CVAE it belongs to

__all__ = [
    "AAE",
    "CAAE",
    "CVAE",
    "GAN",
    "LIKELIHOODS",
    "MEVAE",
    "MODELS",
    "PRESETS",
    "VAE",
    "AgeCGAN",
    "Autoencoder",
    "Baseline",
    "FlowGAN",
    "FlowModel",
    "RecurrentAger",
    "SemiSupervisedAAE",
]
