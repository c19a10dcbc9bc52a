from .mount import run

run()
