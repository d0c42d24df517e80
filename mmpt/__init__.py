"""mmpt: parameter-efficient multi-task transfer learning."""
import logging

# bitsandbytes (quantized backbones; PEFT imports it whenever it is installed) asks the `kernels`
# package at import for an optional CPU kernel from the hub, and both log a warning when it cannot
# be had offline: two lines of noise before every run's output, and in every one-line error.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)
