# The smallest Django project that serves the recipe's two views (no database, no apps).
# The reactor is NOT started in an AppConfig.ready(): ready() runs for every management
# command (migrate, shell, test), in runserver's reloader parent, and in gunicorn's master
# under --preload (before the fork). Start it from the server's per-worker hook instead:
#   gunicorn -c gunicorn_hooks.py -w 4 djangosite.wsgi
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djangosite.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
