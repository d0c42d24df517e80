"""`MmptLM`: an lm-eval model (lm_eval.api.model.LM) over a finished mmpt run.

    from lm_eval import simple_evaluate
    from mmpt.evaluate.lm import MmptLM
    simple_evaluate(model=MmptLM.from_run("outputs/.../run"), tasks=["mmpt_rte"])

Requests are encoded as mmpt encodes its data (mmpt/data/collate.py): a causal LM's context gets
the tokenizer's leading special tokens (Llama's BOS; none for GPT-2 or BERT vocabularies) and no
EOS, and a continuation is the tokens that `context + continuation` has past the context's; T5's
context goes to the encoder and ends with EOS, and the continuation (EOS appended unless it ends
with one) is the decoder's target, lm-eval's seq2seq convention. Scoring batches contexts and
scores all continuations of a context on top of it (scoring.py).
"""
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from mmpt.data.collate import leading_specials
from mmpt.evaluate import scoring
from mmpt.evaluate.load import open_model

DEFAULT_GEN_TOKENS = 256


class MmptLM(LM):
    # Not put in lm-eval's model registry: registering a model before lm-eval has loaded its own
    # (lazily) hides them (`model="hf"` then fails in the same process). Hand the object over.
    def __init__(self, model, task_id: int = 0, batch_size: int = 16, device: str | None = None):
        super().__init__()
        import torch

        self.model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.tok = model.tokenizer
        self.causal = model.family.name == "causal"
        self.task_id, self.batch_size = task_id, int(batch_size)
        self.lead = leading_specials(self.tok) if self.causal else []
        config = model.backbone.config
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @classmethod
    def from_run(cls, run_dir, task_id: str | None = None, base: bool = False, batch_size: int = 16,
                 device: str | None = None) -> "MmptLM":
        """The run's best weights as it built them (base=True: its backbone with no adapter).
        task_id: a multi-task run's task whose routing to use (poly/MHR, per-task prompts)."""
        model, index, run = open_model(run_dir, task_id, base)
        lm = cls(model, index, batch_size, device)
        lm.run_dir = str(run.path)
        return lm

    # -- encoding --
    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _context(self, context: str) -> list[int]:
        if self.causal:
            ids = self.lead + self._ids(context)
            return ids or [self.tok.eos_token_id]  # an empty context: lm-eval's prefix token
        return self._ids(context) + [self.tok.eos_token_id]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        stripped = context.rstrip()  # trailing whitespace belongs to the continuation (as lm-eval)
        continuation = context[len(stripped):] + continuation
        if not self.causal:
            cont = self._ids(continuation.strip())
            if not cont or cont[-1] != self.tok.eos_token_id:
                cont = cont + [self.tok.eos_token_id]
            return self._context(stripped), cont
        ctx = self._ids(stripped)
        cont = self._ids(stripped + continuation)[len(ctx):]
        ctx = self.lead + ctx or [self.tok.eos_token_id]
        if self.max_length and len(ctx) + len(cont) > self.max_length:  # keep the context's end
            ctx = ctx[-(self.max_length - len(cont)):]
        return ctx, cont

    # -- lm-eval's three request types --
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        pairs = [self._pair(*r.args) for r in requests]
        out = scoring.score(self.model, pairs, self.batch_size, self.task_id)
        for r, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        """Each text's log-likelihood in disjoint windows of the model's length, as lm-eval does."""
        limit = self.max_length or 512
        pairs, owner = [], []
        for n, r in enumerate(requests):
            windows = get_rolling_token_windows(self._ids(r.args[0]), prefix_token=self.tok.eos_token_id,
                                                max_seq_len=limit, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                pairs.append((list(ctx), list(cont)))
                owner.append(n)
        sums = [0.0] * len(requests)
        for n, (logp, _) in zip(owner, scoring.score(self.model, pairs, self.batch_size, self.task_id, "rolling")):
            sums[n] += logp
        for r, s in zip(requests, sums):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, s)
        return sums

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Greedy decoding (the model's own loop), cut at the first `until` string."""
        out = [None] * len(requests)
        by_kwargs: dict = {}
        for i, r in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        for group in by_kwargs.values():
            kw = requests[group[0]].args[1]
            until = kw.get("until") or [self.tok.eos_token]
            until = [until] if isinstance(until, str) else list(until)
            new = int(kw.get("max_gen_toks", DEFAULT_GEN_TOKENS))
            contexts = [self._context(requests[i].args[0]) for i in group]
            if self.causal and self.max_length:
                contexts = [c[-(self.max_length - new):] for c in contexts]
            ids = scoring.generate(self.model, contexts, new, self.batch_size, self.task_id)
            for i, gen in zip(group, ids):
                text = self.tok.decode(gen, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out
