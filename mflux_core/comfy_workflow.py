"""The settings of a ComfyUI PNG: its "prompt" text chunk, the graph it ran in ComfyUI's API format
({node id: {"class_type", "inputs"}}, an input either a value or a link [node id, output index]).

The graph is read from its first sampler (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced: the
one whose latent comes from no other sampler) back along its links: the prompt and FLUX guidance from the positive
conditioning (CLIPTextEncode, CLIPTextEncodeFlux, FluxGuidance), a negative prompt with CFG above 1 (true CFG), the
seed, steps, sampler and scheduler, the size of its empty latent (or its denoise when it starts from an encoded
image), and the LoRAs on its model's path (LoraLoader, LoraLoaderModelOnly, and loaders that keep a list of
{"lora", "strength"} entries, such as rgthree's Power Lora Loader). Values may come through primitive nodes.
What the studio names differently (the checkpoint file, ComfyUI-only samplers) is left out, as the A1111 reader
leaves A1111's out. Values are returned as found; presets.settings_from_comfy clamps and validates them.
"""

from mflux_core.app_metadata import (
    COMFY_SAMPLERS, SCHEDULES, FoundSettings, NotTheirSettings, file_stem, is_number, is_whole, json_object,
)
from mflux_core.lora.a1111 import LoraUse
from mflux_core.request import whole_text

PROMPT_KEY = "prompt"  # the PNG text chunk ComfyUI's SaveImage writes the graph it ran into
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
EMPTY_LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo")
MAX_HOPS = 32  # links followed from one input at most: a graph is not trusted to be acyclic
PRIMITIVE_INPUTS = ("value", "text", "string", "seed", "noise_seed", "int", "float", "number", "prompt")


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


class Graph:
    def __init__(self, nodes: dict):
        self.nodes = {str(key): node for key, node in nodes.items()
                      if isinstance(node, dict) and isinstance(node.get("class_type"), str)
                      and isinstance(node.get("inputs", {}), dict)}
        if not self.nodes:
            raise NotTheirSettings("it holds no ComfyUI nodes")

    def node(self, link) -> dict | None:
        return self.nodes.get(str(link[0])) if is_link(link) else None

    def inputs(self, node: dict) -> dict:
        return node.get("inputs") or {}

    def value(self, node: dict | None, name: str):
        """An input's value, followed through primitive nodes (a link to a node holding one plain value)."""
        value = self.inputs(node).get(name) if node else None
        for _ in range(MAX_HOPS):
            if not is_link(value):
                return value
            source = self.inputs(self.node(value) or {})
            plain = [source[key] for key in PRIMITIVE_INPUTS if key in source]
            value = plain[0] if plain else None
        return None

    def upstream(self, node: dict | None, name: str, through: tuple[str, ...] = ()) -> dict | None:
        """The node an input links to, passing over nodes of the classes in `through` (by the same input)."""
        for _ in range(MAX_HOPS):
            node = self.node(self.inputs(node).get(name)) if node else None
            if node is None or node["class_type"] not in through:
                return node
        return None

    def reaches_a_sampler(self, node: dict | None) -> bool:
        """Whether a latent comes out of another sampler (a second pass: hires fix, refiner)."""
        seen, todo = set(), [node]
        while todo and len(seen) < 4 * MAX_HOPS:
            current = todo.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            if current["class_type"] in SAMPLERS:
                return True
            todo += [self.node(value) for value in self.inputs(current).values() if is_link(value)]
        return False

    def first_sampler(self) -> dict:
        samplers = [node for _, node in sorted(self.nodes.items(), key=lambda item: _node_order(item[0]))
                    if node["class_type"] in SAMPLERS]
        if not samplers:
            raise NotTheirSettings(f"it has no sampler the studio reads ({', '.join(SAMPLERS)})")
        first = [node for node in samplers if not self.reaches_a_sampler(self.node(self.inputs(node).get(
            "latent_image")))]
        return (first or samplers)[0]


def _node_order(key: str) -> tuple[int, str]:
    number = whole_text(key)
    return (number, "") if number is not None else (1 << 62, key)


def read_comfy_prompt(text: str) -> FoundSettings:
    """The settings of the graph in a ComfyUI "prompt" chunk; NotTheirSettings when it is none."""
    graph = Graph(json_object(text))
    sampler = graph.first_sampler()
    found = FoundSettings()
    _sampling(graph, sampler, found.settings)
    _conditioning(graph, sampler, found.settings)
    _latent(graph, sampler, found.settings)
    found.loras = _loras(graph, sampler)
    return found


def _sampling(graph: Graph, sampler: dict, settings: dict) -> None:
    kind = sampler["class_type"]
    if kind == "SamplerCustomAdvanced":
        noise, sigmas = graph.upstream(sampler, "noise"), graph.upstream(sampler, "sigmas")
        found = {"seed": graph.value(noise, "noise_seed"), "steps": graph.value(sigmas, "steps"),
                 "scheduler": graph.value(sigmas, "scheduler"), "denoise": graph.value(sigmas, "denoise"),
                 "sampler_name": graph.value(graph.upstream(sampler, "sampler"), "sampler_name")}
    elif kind == "SamplerCustom":
        sigmas = graph.upstream(sampler, "sigmas")
        found = {"seed": graph.value(sampler, "noise_seed"), "steps": graph.value(sigmas, "steps"),
                 "scheduler": graph.value(sigmas, "scheduler"), "denoise": graph.value(sigmas, "denoise"),
                 "sampler_name": graph.value(graph.upstream(sampler, "sampler"), "sampler_name")}
    else:
        found = {name: graph.value(sampler, name) for name in ("steps", "sampler_name", "scheduler", "denoise")}
        found["seed"] = graph.value(sampler, "seed" if kind == "KSampler" else "noise_seed")
    if is_whole(found["seed"]):
        settings["seed"] = found["seed"]
    if is_whole(found["steps"]):
        settings["steps"] = found["steps"]
    if isinstance(found["sampler_name"], str) and found["sampler_name"] in COMFY_SAMPLERS:
        settings["sampler"] = COMFY_SAMPLERS[found["sampler_name"]]
    if isinstance(found["scheduler"], str) and found["scheduler"] in SCHEDULES:
        settings["schedule"] = found["scheduler"]
    if is_number(found["denoise"]) and 0 < found["denoise"] < 1:
        settings["denoise"] = found["denoise"]


def _conditioning(graph: Graph, sampler: dict, settings: dict) -> None:
    """Prompt, guidance, and a negative prompt with true CFG, from the sampler's (or its guider's) conditioning."""
    guider = graph.upstream(sampler, "guider") if sampler["class_type"] == "SamplerCustomAdvanced" else sampler
    positive_input = "conditioning" if guider and guider["class_type"] == "BasicGuider" else "positive"
    prompt, guidance = _text_and_guidance(graph, guider, positive_input)
    if prompt is not None:
        settings["prompt"] = prompt
    if guidance is not None:
        settings["guidance"] = guidance
    cfg = graph.value(guider, "cfg")
    negative, _ = _text_and_guidance(graph, guider, "negative")
    if negative and is_number(cfg) and cfg > 1:
        settings.update(negative_prompt=negative, true_cfg_scale=cfg)


def _text_and_guidance(graph: Graph, node: dict | None, name: str) -> tuple[str | None, float | None]:
    text = guidance = None
    for _ in range(MAX_HOPS):
        node = graph.upstream(node, name) if node else None
        if node is None:
            break
        kind = node["class_type"]
        if kind == "FluxGuidance" and guidance is None and is_number(graph.value(node, "guidance")):
            guidance = graph.value(node, "guidance")
        if kind == "CLIPTextEncodeFlux":
            t5, clip = graph.value(node, "t5xxl"), graph.value(node, "clip_l")
            text = t5 if isinstance(t5, str) and t5.strip() else clip
            if guidance is None and is_number(graph.value(node, "guidance")):
                guidance = graph.value(node, "guidance")
            break
        if isinstance(graph.value(node, "text"), str):
            text = graph.value(node, "text")
            break
        name = "conditioning"  # FluxGuidance and other conditioning filters pass theirs on
    return (text if isinstance(text, str) else None), guidance


def _latent(graph: Graph, sampler: dict, settings: dict) -> None:
    """The empty latent's size, or, from an encoded image, the image strength the denoise leaves."""
    latent = graph.upstream(sampler, "latent_image", through=("RepeatLatentBatch", "LatentBatchSeedBehavior"))
    denoise = settings.pop("denoise", None)
    if latent is None:
        return
    if latent["class_type"] in EMPTY_LATENTS:
        width, height = graph.value(latent, "width"), graph.value(latent, "height")
        if is_whole(width) and is_whole(height):
            settings.update(width=width, height=height)
    elif latent["class_type"].startswith("VAEEncode") and denoise is not None:
        settings["image_strength"] = round(1 - denoise, 6)


def _loras(graph: Graph, sampler: dict) -> list[LoraUse]:
    """The LoRAs loaded on the sampler's model path, nearest the checkpoint first."""
    holder = sampler
    if sampler["class_type"] == "SamplerCustomAdvanced":
        holder = graph.upstream(sampler, "guider")
    loras: list[LoraUse] = []
    node, seen = (graph.upstream(holder, "model") if holder else None), set()
    while node is not None and id(node) not in seen and len(seen) < MAX_HOPS:
        seen.add(id(node))
        loras[:0] = _loras_of(graph, node)
        node = graph.upstream(node, "model")
    return loras


def _loras_of(graph: Graph, node: dict) -> list[LoraUse]:
    inputs = graph.inputs(node)
    name = graph.value(node, "lora_name")
    if isinstance(name, str) and name not in ("", "None"):
        model = graph.value(node, "strength_model")
        clip = graph.value(node, "strength_clip")
        model = model if is_number(model) else 1.0
        return [LoraUse(file_stem(name), model, clip if is_number(clip) else model)]
    listed = []
    for value in inputs.values():  # a list loader's entries: {"on": true, "lora": "x.safetensors", "strength": 1}
        if isinstance(value, dict) and isinstance(value.get("lora"), str) and value.get("on", True) \
                and value["lora"] not in ("", "None"):
            strength = value.get("strength")
            strength = strength if is_number(strength) else 1.0
            clip = value.get("strengthTwo")
            listed.append(LoraUse(file_stem(value["lora"]), strength, clip if is_number(clip) else strength))
    return listed
