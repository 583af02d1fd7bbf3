"""Distribution ``cambrian-train`` (import name ``cambrian_train``)."""

from setuptools import find_packages, setup

CORE = [
    "torch>=2.4",
    "transformers>=5.0,<6",
    "timm>=1.0,<1.1",
    "open_clip_torch>=3.0,<4",
    "einops>=0.8",
    "wandb>=0.19",
    "hydra-core>=1.3,<1.4",
    "pillow>=10",
    "safetensors>=0.4",
    "tokenizers>=0.21",
    "tqdm>=4.66",
    "numpy>=1.26",
    "matplotlib>=3.8",
    "fsspec>=2024.2",  # gs:// and other remote paths for data and checkpoints (plus gcsfs)
    "peft>=0.13,<1",  # LoRA adapters (model.llm.lora)
]
SERVE = [
    "gradio>=6.31,<7",
    "gradio_client>=2.7,<3",
    "fastapi>=0.115",
    "uvicorn>=0.30",
    "httpx>=0.27",
]
EXTRAS = {
    # Development and CI: the CPU wheels of torch + torch_xla give real XLA SPMD on CPU.
    "xla": ["torch==2.9.0", "torch_xla==2.9.0", "torchvision==0.24.0"],
    # TPU VMs: torch_xla with libtpu.
    "tpu": ["torch==2.9.0", "torch_xla[tpu]==2.9.0", "torchvision==0.24.0"],
    # QLoRA / int8 bases (model.llm.quantization) need bitsandbytes on CUDA
    "gpu": ["torch==2.9.0", "torchvision==0.24.0", "bitsandbytes>=0.45"],
    # Google Cloud Storage paths (gs://) for data and checkpoints.
    "gcs": ["gcsfs>=2024.2"],
    # Benchmarks distributed as parquet (MMMU, MathVista, CV-Bench, ...).
    "eval": ["pyarrow>=14"],
    # video records (data/video.py): PyAV, FFmpeg's decoders in a wheel
    "video": ["av>=12"],
    # cambrian-serve: the gradio page and the OpenAI routes (fastapi, uvicorn come with gradio);
    # every gradio release caps pillow (6.31: <13), so pip resolves pillow 12.x beside it
    "serve": SERVE,
    # playwright drives Debian's chromium in the `browser` test and tools/serve_screenshot.py
    "dev": ["pytest>=8", "ruff>=0.6", "pyarrow>=14", "av>=12", *SERVE, "playwright>=1.49"],
    # cambrian_train/eval/lmms_plugin.py; lmms-eval 0.7.3 imports filelock._api (gone in 4), and
    # beside hydra it needs antlr4 4.9 (hydra's) with the latex parsers built for it
    "lmms": [
        "lmms-eval==0.7.3",
        "filelock<4",
        "antlr4-python3-runtime==4.9.3",
        "latex2sympy2==1.5.4",
        "math-verify==0.9.0",
    ],
}

setup(
    name="cambrian-train",
    version="0.1.0",
    description="Training framework for vision-connector multimodal LLMs (Cambrian-1 style)",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["cambrian_train", "cambrian_train.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "cambrian-train=cambrian_train.cli:main",
            "cambrian-data=cambrian_train.data.cli:main",
            "cambrian-eval=cambrian_train.eval.cli:main",
            "cambrian-chat=cambrian_train.infer.chat:main",
            "cambrian-serve=cambrian_train.serve.cli:main",
            "cambrian-export=cambrian_train.infer.export_cli:main",
            "cambrian-pod=cambrian_train.pod.cli:main",
            "cambrian-tabulate=cambrian_train.eval.table_output:main",
            "cambrian-pretrain-towers=cambrian_train.vision_pretrain.cli:main",
        ],
        # lmms-eval (pip install -e ".[lmms]") finds our model class through this group
        "lmms_eval.models": ["cambrian_train = cambrian_train.eval.lmms_plugin:manifests"],
    },
)
