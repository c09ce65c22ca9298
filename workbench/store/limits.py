"""What listing one store entry may cost: bytes read and parsed, files walked, skeleton size.

A store root may hold folders nobody checked (a shared root filled from downloads, a
colleague's copy), and one entry shaped to hurt must cost bounded time and memory and
break only itself (ARCHITECTURE.md section 2, principles 4 and 14). Every bound is
here, far above what real checkpoints need (the figure each is compared with is noted),
so that a store of hundreds of entries lists in seconds however hostile some are.

An entry over a bound is listed ``broken`` with a sentence naming the file and the
bound; it is never half-read.
"""

from __future__ import annotations

MiB = 1 << 20

#: Bytes read of each JSON file a listing or a load parses, by file name; others use
#: :data:`JSON_DEFAULT_BYTES`. Real sizes: config.json 1-60 KB (a vision config with
#: id2label maps up to ~1 MB), tokenizer_config.json up to ~10 MB (100k added tokens),
#: a shard index under 10 MB (DeepSeek-V3, 163 shards: 8.9 MB), tokenizer.json up to ~33 MB (Gemma 3).
JSON_MAX_BYTES: dict[str, int] = {
    "config.json": 8 * MiB,
    "generation_config.json": 8 * MiB,
    "tokenizer_config.json": 32 * MiB,
    "tokenizer.json": 64 * MiB,  # a 262k-token vocabulary with its merges: ~33 MB
    "chat_template.json": 8 * MiB,
    "special_tokens_map.json": 8 * MiB,
    "preprocessor_config.json": 8 * MiB,
    "processor_config.json": 8 * MiB,
    "model.safetensors.index.json": 64 * MiB,
}
JSON_DEFAULT_BYTES = 8 * MiB

#: JSON files of a model folder that transformers parses at load time: each is checked by
#: the listing (size and depth), so an entry whose file would break the load is broken.
LOAD_TIME_JSON: tuple[str, ...] = ("config.json", "generation_config.json", "tokenizer_config.json",
                                   "special_tokens_map.json", "chat_template.json",
                                   # vision-language models' processors (AutoProcessor reads them)
                                   "processor_config.json", "preprocessor_config.json")

#: Bytes of one chat template file (``chat_template.jinja``, ``additional_chat_templates/*.jinja``).
#: Real templates: 1-40 KB.
TEMPLATE_MAX_BYTES = 4 * MiB
#: Template files read from ``additional_chat_templates/`` (real folders hold a few).
MAX_EXTRA_TEMPLATES = 64

#: Bytes of one safetensors header the workbench parses. The format allows 100 MB; real
#: headers are far smaller (a 7B shard: ~30 KB; a 5 GB shard of a 384-expert MoE: ~150 KB;
#: a 20k-tensor single file would be ~2 MB). Parsing costs ~10 us a tensor, ~0.5-1 s for 4 MiB.
SAFETENSORS_HEADER_MAX_BYTES = 4 * MiB
#: Header bytes over every weight file of one entry (DeepSeek-V3's 163 shards: ~12 MB,
#: Kimi-K2's ~18 MB).
ENTRY_HEADER_MAX_BYTES = 32 * MiB
#: Weight files of one safetensors entry (the largest public checkpoints have a few hundred shards).
MAX_WEIGHT_FILES = 4096

#: Bytes of a GGUF file's header (metadata and tensor table) the workbench reads. Real
#: headers: 1-15 MB, most of it the tokenizer's token and merge lists (a 152k BPE vocabulary: ~6 MB).
GGUF_HEADER_MAX_BYTES = 32 * MiB
#: GGUF metadata keys (real files: 20-60) and tensors (real files: a few thousand).
GGUF_MAX_KEYS = 65_536
GGUF_MAX_TENSORS = 262_144
#: Elements of one GGUF metadata array (a 262k-token vocabulary's tokens, scores, types; 500k merges).
GGUF_MAX_ARRAY = 1_048_576
#: Bytes of one GGUF metadata string (a chat template: up to ~40 KB).
GGUF_MAX_STRING_BYTES = 16 * MiB

#: Files and folders walked to total a folder's size (a real model folder holds tens).
MAX_FOLDER_FILES = 20_000
#: Folder nesting walked (real folders: 1-2 levels).
MAX_FOLDER_DEPTH = 16

#: Modules a meta-device skeleton may register before its build is abandoned (the largest
#: public models as transformers 5 builds them: 1-3 thousand; each costs a few KB of RAM).
SKELETON_MAX_MODULES = 10_000
#: Layers a config may declare before a skeleton is even tried (configs build per-layer
#: lists in Python before any module exists; the deepest public models have ~130 layers).
SKELETON_MAX_LAYERS = 4096
#: CPU seconds a skeleton build (and anything run on it, a meta forward pass) may take.
SKELETON_MAX_S = 20.0


def json_max_bytes(name: str) -> int:
    """The byte bound for a JSON file called ``name`` (see :data:`JSON_MAX_BYTES`)."""
    return JSON_MAX_BYTES.get(name, JSON_DEFAULT_BYTES)
