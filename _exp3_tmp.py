import time, logging, os, sys
logging.basicConfig(level=logging.WARNING)
logging.getLogger("nemo_like").setLevel(logging.INFO)
t0=time.time()
import torch
from nemo_like import NeMoAutoModelForCausalLM, NeMoAutoTokenizer
print('import', time.time()-t0)
t=time.time()
m=NeMoAutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
print('model', time.time()-t, m.dtype, type(m).__name__)
t=time.time()
tok=NeMoAutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
print('tok', time.time()-t, type(tok).__name__, tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id, tok.bos_token, tok.bos_token_id, tok.model_max_length)
msgs=[{"role":"user","content":"What is the capital of France?"}]
p=tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True); print(repr(p))
enc=tok(p, return_tensors="pt")
out=m.generate(**enc, max_new_tokens=20, do_sample=False)
print(repr(tok.decode(out[0, enc.input_ids.shape[1]:])))
ids=tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
print('loss', m(ids, labels=ids).loss.item())
