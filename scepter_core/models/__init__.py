"""Built-in models; importing this package registers them."""
from . import networks  # noqa: F401,E402
from . import embedders, tokenizers  # noqa: F401,E402
from . import backbones, autoencoders  # noqa: F401,E402
from . import losses  # noqa: F401,E402
