export GREETING="hello from .profile"
