"""Parameter-efficient tuners (TUNERS): LoRA / DoRA through peft, adapter files, and the
kohya / A1111 and diffusers / peft LoRA formats. Importing this package registers them."""
from .apply import (adapter_configs, adapter_names, base_model_hash, is_tuned, model_lora_state,
                    sync_ema_copy, tuner_state_dict)
from .files import (adapter_metadata, apply_lora_files, load_adapter, lora_file_format, parse_lora_spec, read_lora_file,
                    save_adapter)
from .formats import export_kohya, export_peft_diffusers, import_kohya, import_peft_diffusers
from .lora import LoRA
from .merge import merge_lora
from .state import LoraState, ModuleLora
from .tune import apply_tuners

__all__ = ['LoRA', 'LoraState', 'ModuleLora', 'adapter_configs', 'adapter_metadata', 'adapter_names',
           'apply_lora_files', 'apply_tuners', 'base_model_hash', 'export_kohya', 'export_peft_diffusers',
           'import_kohya', 'import_peft_diffusers', 'is_tuned', 'load_adapter', 'lora_file_format', 'merge_lora',
           'model_lora_state', 'parse_lora_spec', 'read_lora_file', 'save_adapter',
           'sync_ema_copy', 'tuner_state_dict']
