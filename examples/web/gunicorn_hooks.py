# gunicorn (sync or gthread workers, with or without --preload): one reactor per worker.
# (Named gunicorn_hooks.py, not gunicorn.conf.py, so that gunicorn does not load it by
# itself for fastapi_app, which starts its reactor in its lifespan instead.)
#   gunicorn -c gunicorn_hooks.py -w 4 flask_app:app
#   gunicorn -c gunicorn_hooks.py -w 4 --preload flask_app:app
#   gunicorn -c gunicorn_hooks.py -w 4 djangosite.wsgi
# post_worker_init starts it in each worker, after the fork and after the app is imported;
# worker_exit stops it. The distributor binds an ephemeral port; nodes find it by discovery
# (JOBREACTOR_DISCOVERY_URL, JOBREACTOR_GROUP: see common.py).
# With --max-requests, add --max-requests-jitter and consider hooks(fast_exit=True): README.md
# here, "Recycling workers".
from jobreactor.contrib.gunicorn import hooks

post_worker_init, worker_exit = hooks()
