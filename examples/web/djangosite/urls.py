from common import enqueue
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello")


def enqueue_one(request: HttpRequest, n: int) -> JsonResponse:
    return JsonResponse(enqueue(n, float(request.GET.get("s", 0))))


urlpatterns = [path("hello", hello), path("enqueue/<int:n>", enqueue_one)]
