"""`compress mask save|apply`: an SMP result as a packed bit-mask over its backbone, and back."""


def register(sub):
    p = sub.add_parser("mask", help="SMP: save a pruned result as a packed bit-mask over its backbone, or re-apply one")
    s = p.add_subparsers(dest="mask_verb", metavar="save|apply")
    a = s.add_parser(
        "save", help="DIR (an smp-l/smp-s/smp-struct result) -> MASK file (smp-struct: one bit per head and FFN dim)"
    )
    a.add_argument("pruned")
    a.add_argument(
        "--backbone", help="the pre-trained model it was pruned from (default: base_model in compression.json)"
    )
    a.add_argument("--output", "-o", required=True)
    a.set_defaults(func=save)
    b = s.add_parser("apply", help="BACKBONE + MASK -> a checkpoint directory")
    b.add_argument("backbone")
    b.add_argument("mask")
    b.add_argument("--output", "-o", required=True)
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=apply)


def save(a):
    from compress.core.artifacts import read_compression_json
    from compress.core.errors import InvalidConfigError
    from compress.core.models import load_classifier
    from compress.pruning.bitmask import save_bitmask

    info = read_compression_json(a.pruned) or {}
    backbone = a.backbone or info.get("base_model")
    if not backbone:
        raise InvalidConfigError(
            "no backbone known: pass --backbone (the pre-trained model the result was pruned from)"
        )
    pruned = load_classifier(a.pruned)
    res = save_bitmask(pruned, load_classifier(backbone, pruned.config.num_labels), a.output)
    full = sum(p.numel() * 4 for p in pruned.parameters())
    print(
        f"wrote {a.output}: {res['bytes'] / 1e6:.2f} MB ({res['linears']} masked matrices) vs {full / 1e6:.1f} MB for the full model"
    )


def apply(a):
    import json

    from safetensors import safe_open

    from compress.core.artifacts import atomic_dir, check_output_dir
    from compress.core.errors import ArtifactError
    from compress.core.models import load_classifier, load_tokenizer
    from compress.pruning.bitmask import apply_bitmask

    check_output_dir(a.output, a.overwrite, inputs=(a.backbone, a.mask))
    try:
        with safe_open(a.mask, "np") as f:
            num_labels = json.loads((f.metadata() or {}).get("config", "{}")).get("num_labels")
    except Exception as e:  # missing, truncated or not safetensors: safetensors raises several types
        raise ArtifactError(
            f"cannot read bit-mask file {a.mask} ({e.__class__.__name__}: {str(e).splitlines()[0][:150]}); "
            "pass the file written by `compress mask save`"
        ) from e
    model = apply_bitmask(load_classifier(a.backbone, num_labels), a.mask)
    with atomic_dir(a.output, overwrite=a.overwrite) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(a.backbone).save_pretrained(tmp)
    print(f"wrote {a.output}")
