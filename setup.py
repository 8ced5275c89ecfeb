"""fairseq_mswa: Multi-Scale Window Attention language models as a fairseq --user-dir plugin."""

from setuptools import find_packages, setup

setup(
    name="fairseq_mswa",
    version="0.1.0",
    description="Multi-Scale Window Attention (MSWA) language models for fairseq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # fairseq_mswa: the plugin (fairseq's --user-dir); data_prep: corpora; studies: the drivers
    # behind scripts/ (they import the other two, never the reverse; no sys.path tricks)
    packages=find_packages(include=["fairseq_mswa", "fairseq_mswa.*", "data_prep", "studies"]),
    install_requires=[
        # FlexAttention (torch.nn.attention.flex_attention) needs torch >= 2.5
        "torch>=2.5",
        # official fairseq 0.12.2 cannot install on current pip/Python (omegaconf<2.1 pin);
        # ve-fairseq is a maintained 0.12 fork with cp311/cp312 wheels (see README)
        "ve-fairseq==0.12.3",
        "sentencepiece",
        "tensorboard",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],
        "dev": ["pytest>=7", "pytest-timeout", "pytest-xdist"],
    },
)
