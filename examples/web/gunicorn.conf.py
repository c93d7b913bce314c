# gunicorn (sync or gthread workers, with or without --preload): one reactor per worker.
#   gunicorn -c gunicorn.conf.py -w 4 flask_app:app
#   gunicorn -c gunicorn.conf.py -w 4 --preload flask_app:app
#   gunicorn -c gunicorn.conf.py -w 4 djangosite.wsgi
# post_worker_init starts it in each worker after the fork (and after the app is imported);
# worker_exit stops it. The distributor binds an ephemeral port; nodes find it by discovery.
from common import DISTRIBUTOR

from jobreactor.contrib.gunicorn import hooks

post_worker_init, worker_exit = hooks("127.0.0.1", 0, **DISTRIBUTOR)
