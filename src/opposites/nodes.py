"""Nodes and edges of the circuit graph (no torch: figure and table jobs use them).

A node is a writer (the embedding, a head's output, an MLP) or a reader (a head's q/k/v input, an
MLP's input, the logits). Result files name nodes as text; `Node.parse` and `str(node)` are the one
pair that converts, at the file boundary:
    "embed"   "logits"   "MLP 3"   "9.9" (head output)   "9.9.q" (head 9.9's query input)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property


@dataclass(frozen=True)
class Node:
    kind: str  # embed | head | mlp | logits
    layer: int | None = None
    head: int | None = None
    input: str | None = None  # q, k or v: a head's input (a reader); None for the head's output

    @staticmethod
    def parse(text: str) -> "Node":
        return _parse(text)  # nodes are immutable: one per label, parsed once

    def __str__(self) -> str:
        if self.kind in ("embed", "logits"):
            return self.kind
        if self.kind == "mlp":
            return f"MLP {self.layer}"
        return f"{self.layer}.{self.head}" + (f".{self.input}" if self.input else "")

    def __hash__(self) -> int:  # computed once: circuit discovery hashes nodes of 10^4-edge lists many times
        if "_hash" not in self.__dict__:
            self.__dict__["_hash"] = hash((self.kind, self.layer, self.head, self.input))
        return self.__dict__["_hash"]

    def __reduce__(self):  # pickled by its fields: a string's hash differs between processes
        return Node, (self.kind, self.layer, self.head, self.input)

    @cached_property
    def component(self) -> "Node":
        """The head or MLP a reader belongs to (a head's q/k/v input -> the head)."""
        return Node(self.kind, self.layer, self.head) if self.input else self

    @cached_property
    def step(self) -> tuple[float, int]:
        """Where the node's component computes in the forward: the embedding, then per layer its
        heads, then its MLP; the logits last. An edge always goes to a later step than its writer's."""
        ends = {"embed": (float("-inf"), 0), "logits": (float("inf"), 0)}
        return ends[self.kind] if self.kind in ends else (self.layer, 0 if self.is_head else 1)

    @property
    def is_head(self) -> bool:
        return self.kind == "head"


@cache
def _parse(text: str) -> Node:
    if text in ("embed", "logits"):
        return Node(text)
    if text.startswith("MLP "):
        return Node("mlp", int(text[4:]))
    parts = text.split(".")
    if (len(parts) == 2 or len(parts) == 3 and parts[2] in ("q", "k", "v")) and parts[0].isdigit() \
            and parts[1].isdigit():
        return Node("head", int(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else None)
    raise ValueError(f"not a circuit node: {text!r} (expected embed, logits, 'MLP <layer>', "
                     "'<layer>.<head>' or '<layer>.<head>.<q|k|v>')")


@dataclass(frozen=True)
class Edge:
    src: Node  # a writer
    dst: Node  # a reader
    score: float = 0.0

    @classmethod
    def from_record(cls, record: dict) -> "Edge":
        return cls(Node.parse(record["src"]), Node.parse(record["dst"]), float(record.get("score", 0.0)))

    def record(self) -> dict:
        return {"src": str(self.src), "dst": str(self.dst), "score": self.score}


def head_nodes(circuit: dict) -> set[str]:
    """Labels of the heads among a circuit file's nodes."""
    return {x for x in circuit["nodes"] if Node.parse(x).is_head}


def component_nodes(edges: list[Edge]) -> set[Node]:
    """Every component an edge list touches (readers mapped to their head or MLP)."""
    return {e.src for e in edges} | {e.dst.component for e in edges}
